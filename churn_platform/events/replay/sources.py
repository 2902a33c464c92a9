"""The files a replay reads, and reading each in bounded batches of rows.

CSV is read as text (so no row fails to parse halfway through a large file);
`--separator whitespace` files are read in blocks of whole lines whose runs
of blanks become one tab; JSON Lines in blocks of whole lines; Parquet by
row groups. Every batch knows the 0-based data row it starts at: derived
event ids and error messages depend on it.
"""

from __future__ import annotations

import glob
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import polars as pl

from churn_platform.events.replay.options import FORMATS, WHITESPACE, ReplayError

_SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_GLOB_CHARS = frozenset("*?[")
_BLOCK_BYTES = 16 << 20
# The row number a JSON Lines batch row came from (its lines may be skipped).
ROW = "__replay_row__"
_BLANK_EDGES = re.compile(rb"^[ \t]+|[ \t\r]+$", re.MULTILINE)
_BLANK_RUN = re.compile(rb"[ \t]+")
_EMPTY_LINES = re.compile(rb"\n\n+")


@dataclass(frozen=True)
class Source:
    path: Path
    name: str  # relative to the root the user named; what derived ids hash
    fmt: str
    hive: tuple[tuple[str, str], ...] = ()
    separator: str = ","

    @property
    def from_text(self) -> bool:
        """Values are text that may hold numbers (CSV)."""
        return self.fmt == "csv"


def _format_of(path: Path, fmt: str | None) -> str | None:
    return fmt or _SUFFIX_FORMATS.get(path.suffix.lower())


def _glob_root(pattern: str) -> Path:
    parts = Path(pattern).parts
    root = []
    for part in parts:
        if _GLOB_CHARS & set(part):
            break
        root.append(part)
    return Path(*root) if root else Path(".")


def _hive(name: str) -> tuple[tuple[str, str], ...]:
    """`key=value` directory names of a partitioned data set (Hive style) as columns."""
    pairs = []
    for part in Path(name).parts[:-1]:
        key, sep, value = part.partition("=")
        if sep and key:
            pairs.append((key, value))
    return tuple(pairs)


def resolve_sources(
    path: str | os.PathLike[str], fmt: str | None = None, separator: str | None = None
) -> list[Source]:
    """The files to read for `path` (a file, a directory or a glob), in name order."""
    if fmt is not None and fmt not in FORMATS:
        raise ReplayError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    text = os.fspath(path)
    if _GLOB_CHARS & set(text):
        root = _glob_root(text)
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise ReplayError(f"no file matches {text}: check the pattern (quote it in the shell)")
    elif Path(text).is_dir():
        root = Path(text)
        files = sorted(
            p
            for p in root.rglob("*")
            if p.is_file()
            and not any(part.startswith((".", "_")) for part in p.relative_to(root).parts)
            and _SUFFIX_FORMATS.get(p.suffix.lower()) is not None
            and (fmt is None or _SUFFIX_FORMATS[p.suffix.lower()] == fmt)
        )
        if not files:
            raise ReplayError(
                f"{text} has no {fmt or 'CSV, JSON Lines or Parquet'} files "
                f"({', '.join(sorted(_SUFFIX_FORMATS))})"
            )
    elif Path(text).is_file():
        root = Path(text).parent
        files = [Path(text)]
    else:
        raise ReplayError(
            f"{text} does not exist: give the path of a CSV, JSON Lines or Parquet file"
        )

    sources = []
    for file in files:
        file_fmt = _format_of(file, fmt)
        if file_fmt is None:
            raise ReplayError(
                f"cannot tell the format of {file} from its extension: "
                f"pass --format ({', '.join(FORMATS)})"
            )
        if separator is not None and file_fmt != "csv":
            raise ReplayError(
                f"--separator applies to CSV files, and {file} is {file_fmt}: "
                "pass --format csv if it is text with columns"
            )
        name = file.relative_to(root).as_posix() if file.is_relative_to(root) else file.name
        sep = separator or ("\t" if file.suffix.lower() == ".tsv" else ",")
        sources.append(Source(file, name, file_fmt, _hive(name), sep))
    formats = {s.fmt for s in sources}
    if len(formats) > 1:
        raise ReplayError(
            f"{text} mixes formats ({', '.join(sorted(formats))}): pass --format to pick one"
        )
    return sources


def file_columns(source: Source) -> list[str]:
    """The file's columns (JSON Lines: the keys of its first block, since keys vary by line)."""
    try:
        if source.fmt == "csv" and source.separator == WHITESPACE:
            names = _whitespace_header(source.path)
        elif source.fmt == "csv":
            scan = pl.scan_csv(source.path, infer_schema=False, separator=source.separator)
            names = scan.collect_schema().names()
        elif source.fmt == "parquet":
            names = list(pl.read_parquet_schema(source.path))
        else:
            block = next(_line_blocks(source.path, jsonl=True), b"")
            names = [c for c in _jsonl_frame(block, 0)[0].columns if c != ROW]
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ReplayError(f"cannot read {source.path} as {source.fmt}: {exc}") from exc
    if source.fmt == "csv" and len(names) == 1 and source.separator != WHITESPACE:
        (only,) = names
        if " " in only.strip() or "\t" in only:
            raise ReplayError(
                f"{source.name} has one column {only[:60]!r} with separator "
                f"{source.separator!r}: its columns look separated by blanks; "
                "pass --separator whitespace (or tab)"
            )
    return names + [k for k, _ in source.hive if k not in names]


def with_hive(frame: pl.DataFrame, source: Source) -> pl.DataFrame:
    extra = [pl.lit(v, dtype=pl.String).alias(k) for k, v in source.hive if k not in frame.columns]
    return frame.with_columns(extra) if extra else frame


def _scan_batches(
    source: Source, columns: list[str], batch_rows: int, limit: int | None
) -> Iterator[pl.DataFrame]:
    if source.fmt == "csv":
        scan = pl.scan_csv(source.path, infer_schema=False, separator=source.separator)
    else:
        scan = pl.scan_parquet(source.path, hive_partitioning=False)
    present = scan.collect_schema().names()
    scan = scan.select([c for c in columns if c in present])  # read only mapped columns
    if limit is not None:
        scan = scan.head(limit)
    yield from scan.collect_batches(chunk_size=batch_rows)


def _line_blocks(path: Path, jsonl: bool = False) -> Iterator[bytes]:
    """Whole lines of `path`, about `_BLOCK_BYTES` at a time (a leading BOM dropped)."""
    with open(path, "rb") as f:
        head = f.read(_BLOCK_BYTES)
        if jsonl and head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
            raise ReplayError(
                f"{path} is a JSON array, not JSON Lines: convert it with "
                f"`jq -c '.[]' {path} > {path.with_suffix('.jsonl')}` and replay that"
            )
        rest = b""
        block = head.removeprefix(b"\xef\xbb\xbf")
        while block:
            block = rest + block
            cut = block.rfind(b"\n") + 1
            if cut:
                yield block[:cut]
                rest = block[cut:]
            else:
                rest = block
            block = f.read(_BLOCK_BYTES)
        if rest.strip():
            yield rest


def _jsonl_frame(block: bytes, first_row: int) -> tuple[pl.DataFrame, list[tuple[int, bytes]]]:
    """Rows of a block of JSON lines, and the (row, line) of lines that are not JSON objects."""
    try:
        frame = pl.read_ndjson(io.BytesIO(block), infer_schema_length=None)
        return frame.with_row_index(ROW, offset=first_row), []
    except pl.exceptions.PolarsError:
        pass
    # Slow path, only for a block with a broken line: find the lines that do not
    # parse and keep them as messages so the contract check counts them.
    good, rows, broken = [], [], []
    lines = [line for line in block.split(b"\n") if line.strip()]
    for i, line in enumerate(lines, start=first_row):
        try:
            if not isinstance(msgspec.json.decode(line), dict):
                raise msgspec.DecodeError("not an object")
            good.append(line)
            rows.append(i)
        except msgspec.DecodeError:
            broken.append((i, line))
    if not good:
        return pl.DataFrame({ROW: pl.Series([], dtype=pl.Int64)}), broken
    frame = pl.read_ndjson(io.BytesIO(b"\n".join(good)), infer_schema_length=None)
    return frame.with_columns(pl.Series(ROW, rows, dtype=pl.Int64)), broken


def _tabbed(block: bytes) -> bytes:
    """Runs of blanks → one tab; blanks at line ends and empty lines dropped."""
    block = _BLANK_RUN.sub(b"\t", _BLANK_EDGES.sub(b"", block))
    return _EMPTY_LINES.sub(b"\n", block).lstrip(b"\n")


def _whitespace_header(path: Path) -> list[str]:
    for block in _line_blocks(path):
        for line in block.split(b"\n"):
            if line.strip():
                return line.decode("utf-8", "replace").split()
    return []


def _whitespace_frames(
    source: Source, columns: list[str], limit: int | None
) -> Iterator[pl.DataFrame]:
    """Frames of a blank-separated text file (all columns text), header on its first line."""
    names: list[str] | None = None
    wanted: list[int] = []
    rows = 0
    for block in _line_blocks(source.path):
        data = _tabbed(block)
        if names is None:
            header, _, data = data.partition(b"\n")
            names = header.decode("utf-8", "replace").split("\t")
            wanted = [i for i, name in enumerate(names) if name in columns]
        if not data.strip():
            continue
        try:
            frame = pl.read_csv(
                io.BytesIO(data),
                separator="\t",
                has_header=False,
                infer_schema=False,
                quote_char=None,
                columns=wanted,
            )
        except pl.exceptions.PolarsError as exc:
            reason = str(exc).splitlines()[0]
            last = rows + data.count(b"\n")
            raise ReplayError(
                f"cannot read {source.name} as blank-separated columns "
                f"(rows {rows + 1:,} to about {last:,}): {reason}; "
                f"every line must have the {len(names)} columns of the header"
            ) from exc
        frame.columns = [names[i] for i in wanted]
        if limit is not None and rows + frame.height > limit:
            frame = frame.head(limit - rows)
        yield frame
        rows += frame.height
        if limit is not None and rows >= limit:
            return


@dataclass
class Batch:
    frame: pl.DataFrame
    first_row: int
    broken: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.frame.height + len(self.broken)


def read_batches(
    source: Source, columns: list[str], batch_rows: int, limit: int | None
) -> Iterator[Batch]:
    """Batches of about `batch_rows` rows (text blocks: 16 MB at a time), up to `limit` rows."""
    row = 0
    try:
        if source.fmt == "jsonl":
            for block in _line_blocks(source.path, jsonl=True):
                frame, broken = _jsonl_frame(block, row)
                n = frame.height + len(broken)
                if limit is not None and row + n > limit:
                    frame = frame.filter(pl.col(ROW) < limit)
                    broken = [(r, line) for r, line in broken if r < limit]
                    n = limit - row
                yield Batch(with_hive(frame, source), row, broken)
                row += n
                if limit is not None and row >= limit:
                    return
            return
        if source.fmt == "csv" and source.separator == WHITESPACE:
            frames = _whitespace_frames(source, columns, limit)
        else:
            frames = _scan_batches(source, columns, batch_rows, limit)
        for frame in frames:
            for start in range(0, frame.height, batch_rows):
                part = frame.slice(start, batch_rows)
                yield Batch(with_hive(part, source), row)
                row += part.height
    except pl.exceptions.PolarsError as exc:
        raise ReplayError(
            f"cannot read {source.path} as {source.fmt} (after row {row}): {exc}"
        ) from exc
