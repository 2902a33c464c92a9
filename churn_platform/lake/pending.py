"""Pending commits: data files written elsewhere, recorded for the process that commits them.

Files written by workers elsewhere (Beam) reach the process that commits them
through a small JSON record under the table's `_pending/` directory: Delta
readers never look there, and the record names files no commit references yet.
The committing process reads the record, commits its files (`tables.commit`)
and discards it. The files of a record that is never committed are files no
commit references: invisible to readers, and removed by `vacuum` once older
than the retention.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from churn_platform.lake.store import Lake, LakeError
from churn_platform.lake.tables import DataFile, TableSpec

PENDING_DIR = "_pending"


def _pending_path(spec: TableSpec, name: str) -> str:
    return f"{spec.name}/{PENDING_DIR}/{name}.json"


def write_pending(
    lake: Lake,
    spec: TableSpec,
    name: str,
    files: Sequence[DataFile],
    info: Mapping[str, Any] | None = None,
) -> None:
    """Record `files` (written, not committed) and `info` for the committing process."""
    body = {"files": [f.to_dict() for f in files], "info": dict(info or {})}
    lake.write_bytes(_pending_path(spec, name), json.dumps(body).encode())


def read_pending(lake: Lake, spec: TableSpec, name: str) -> tuple[list[DataFile], dict[str, Any]]:
    """The files and info `write_pending` recorded under `name`."""
    relative = _pending_path(spec, name)
    try:
        body = json.loads(lake.read_bytes(relative))
    except FileNotFoundError as exc:
        raise LakeError(
            f"no pending commit at {lake.url(relative)}: the job that writes it did not "
            "finish; run it again"
        ) from exc
    except json.JSONDecodeError as exc:
        raise LakeError(
            f"{lake.url(relative)} is not valid JSON: {exc}; run the job again"
        ) from exc
    return [DataFile.from_dict(f) for f in body["files"]], body.get("info", {})


def discard_pending(lake: Lake, spec: TableSpec, name: str) -> None:
    """Remove the record of `name` (its files stay: committed, or left for `vacuum`)."""
    with contextlib.suppress(FileNotFoundError):
        lake.remove(_pending_path(spec, name))
