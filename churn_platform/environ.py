"""Settings put into os.environ for a while: what Dagster resolves `{env: ...}` and `dg.EnvVar` from."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping


@contextlib.contextmanager
def temporary_environ(values: Mapping[str, str] | None) -> Iterator[None]:
    """`values` in os.environ inside the block; each variable as it was after it."""
    saved = {key: os.environ.get(key) for key in values or {}}
    os.environ.update(values or {})
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
