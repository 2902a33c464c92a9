"""Dagster preview APIs the code location relies on on purpose, built without their warning."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import dagster as dg


@contextlib.contextmanager
def partitioned_checks() -> Iterator[None]:
    """Build partitioned asset checks (a Dagster preview) without its `PreviewWarning`.

    They are what lets each as-of date carry its own check results (the feature
    checks, `drift_below_threshold`), so the warning is expected, not news.
    Any other warning still shows.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        yield
