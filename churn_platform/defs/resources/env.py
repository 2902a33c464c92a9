"""Numbers from environment variables, for resources built when definitions load."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping


def env_number(
    environ: Mapping[str, str],
    name: str,
    valid: Callable[[float], bool],
    expected: str,
    example: str,
) -> float | None:
    """`name`'s value as a number, None when unset; a bad value names the variable and the fix.

    `expected` says what a valid value is ("a positive number"), `example` what
    to set instead ("0.25 (the default)").
    """
    configured = (environ.get(name) or "").strip()
    if not configured:
        return None
    try:
        value = float(configured)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and valid(value)):
        raise ValueError(
            f"{name}={configured!r} is not {expected}: set it to e.g. {example}, or unset it"
        )
    return value
