"""The project-local Dagster instance: DAGSTER_HOME under var/, settings from dagster.yaml."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PROJECT_DAGSTER_YAML = Path(__file__).resolve().parent.parent / "dagster.yaml"
DEFAULT_DAGSTER_HOME = Path("var/dagster")


def prepare_dagster_home(home: str | os.PathLike[str] | None = None) -> Path:
    """Create DAGSTER_HOME (default: $DAGSTER_HOME or var/dagster) with the project's dagster.yaml."""
    target = Path(home or os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).resolve()
    target.mkdir(parents=True, exist_ok=True)
    if PROJECT_DAGSTER_YAML.exists():
        shutil.copyfile(PROJECT_DAGSTER_YAML, target / "dagster.yaml")
    return target
