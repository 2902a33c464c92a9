"""The lake: a root (local path or fsspec URI) with atomic writes.

Every file is written under a temporary name (starting with '.', which Arrow
and polars readers skip) and renamed into place, so readers never see half a
file. On object stores the final PUT is atomic by itself.
"""

from __future__ import annotations

import errno
import io
import os
import uuid
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

DEFAULT_LAKE_ROOT = "var/lake"
PARQUET_COMPRESSION = "zstd"
# temporary files are named f".{final name}{TEMP_MARKER}{12 hex digits}"
TEMP_MARKER = ".tmp-"

# what to do when the lake's filesystem refuses a write
_WRITE_HINTS = {
    errno.ENOSPC: "the filesystem holding the lake is full: free space there (or point "
    "CHURN_LAKE at a larger one) and rerun",
    errno.EDQUOT: "the disk quota of the filesystem holding the lake is used up: free space "
    "there (or point CHURN_LAKE at a larger one) and rerun",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f): raise the limit "
    "and rerun",
    errno.EROFS: "the lake is on a read-only filesystem: remount it read-write (or point "
    "CHURN_LAKE at a writable directory) and rerun",
    errno.EACCES: "this user may not write there: fix the lake directory's ownership or "
    "permissions (or point CHURN_LAKE at a writable directory) and rerun",
    errno.EPERM: "this user may not write there: fix the lake directory's ownership or "
    "permissions (or point CHURN_LAKE at a writable directory) and rerun",
}


def temp_target(name: str) -> str | None:
    """The final file name a temporary file `name` was being written for, else None."""
    if not name.startswith(".") or TEMP_MARKER not in name:
        return None
    return name[1:].rpartition(TEMP_MARKER)[0] or None


def _write_failure(url: str, exc: OSError) -> LakeError:
    hint = _WRITE_HINTS.get(exc.errno or 0)
    return LakeError(f"could not write {url}: {exc}" + (f"; {hint}" if hint else ""))


def write_hint(message: str) -> str | None:
    """What to do about a write failure reported as text ('... (os error 28)' from delta-rs)."""
    import re

    match = re.search(r"os error (\d+)", message)
    return _WRITE_HINTS.get(int(match[1])) if match else None


class LakeError(RuntimeError):
    """A lake read or write failed; the message names the path."""


class Lake:
    """Files under `root`, addressed by paths relative to it ('raw/_ledger/t.json')."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        root = os.fspath(root)
        if not root:
            raise LakeError("CHURN_LAKE is empty: set it to a directory or an fsspec URI")
        self.fs, path = fsspec.core.url_to_fs(root)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.root = str(Path(path).resolve()) if self.is_local else path.rstrip("/")
        self.uri = root if not self.is_local else self.root

    def __repr__(self) -> str:
        return f"Lake({self.uri!r})"

    def path(self, relative: str) -> str:
        """The full filesystem path of `relative`."""
        return f"{self.root}/{relative.lstrip('/')}"

    def url(self, relative: str) -> str:
        """A URL/path that Arrow, polars or Beam can open."""
        full = self.path(relative)
        if self.is_local:
            return full
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return f"{protocol}://{full}"

    # writes -----------------------------------------------------------------
    def write_bytes(self, relative: str, data: bytes) -> int:
        """Atomically write `data` to `relative`; returns the byte count."""
        final = self.path(relative)
        parent, _, name = final.rpartition("/")
        temp = f"{parent}/.{name}{TEMP_MARKER}{uuid.uuid4().hex[:12]}"
        try:
            self.fs.makedirs(parent, exist_ok=True)
            if self.is_local:
                with open(temp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(temp, final)
            else:
                self.fs.pipe_file(temp, data)
                self.fs.mv(temp, final)
        except OSError as exc:
            self._discard(temp)
            raise _write_failure(self.url(relative), exc) from exc
        return len(data)

    def write_parquet(
        self,
        relative: str,
        table: pa.Table,
        dictionary_columns: list[str] | None = None,
        statistics_columns: list[str] | None = None,
    ) -> int:
        """Atomically write `table` as zstd Parquet; returns the file size.

        Naming the columns worth dictionary-encoding and worth min/max
        statistics (instead of all) made raw event files cheaper to write and
        smaller (docs/benchmarks.md, Extract).
        """
        sink = io.BytesIO()
        pq.write_table(
            table,
            sink,
            compression=PARQUET_COMPRESSION,
            use_dictionary=True if dictionary_columns is None else dictionary_columns,
            write_statistics=True if statistics_columns is None else statistics_columns,
            # a CRC per page (free to write): a reader that verifies it turns a garbled
            # file into an error; without it 8% of garbled data pages read as wrong values
            write_page_checksum=True,
        )
        return self.write_bytes(relative, sink.getvalue())

    def _discard(self, path: str) -> None:
        try:
            if self.fs.exists(path):
                self.fs.rm(path)
        except OSError:
            pass

    def remove(self, relative: str) -> None:
        try:
            self.fs.rm(self.path(relative))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise _write_failure(f"{self.url(relative)} (removing it)", exc) from exc

    # reads ------------------------------------------------------------------
    def read_bytes(self, relative: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(relative))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise LakeError(f"could not read {self.url(relative)}: {exc}") from exc

    def exists(self, relative: str) -> bool:
        return self.fs.exists(self.path(relative))

    def list_files(self, relative_dir: str, suffix: str = "") -> list[str]:
        """Relative paths of finished files under `relative_dir` (recursive, sorted)."""
        base = self.path(relative_dir)
        if not self.fs.exists(base):
            return []
        found = []
        prefix = self.root + "/"
        for full in self.fs.find(base):
            name = full.rpartition("/")[2]
            if name.startswith(".") or not name.endswith(suffix):
                continue
            found.append(full[len(prefix) :] if full.startswith(prefix) else full)
        return sorted(found)

    def temp_files(self, relative_dir: str) -> list[str]:
        """Relative paths of temporary files under `relative_dir`: left by a killed writer."""
        base = self.path(relative_dir)
        if not self.fs.exists(base):
            return []
        prefix = self.root + "/"
        found = []
        for full in self.fs.find(base):
            if temp_target(full.rpartition("/")[2]) is not None:
                found.append(full[len(prefix) :] if full.startswith(prefix) else full)
        return sorted(found)

    def size(self, relative: str) -> int:
        return int(self.fs.size(self.path(relative)))
