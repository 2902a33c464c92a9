"""The project as Dagster's tools see it: one release line of Dagster libraries, and `dg`.

dagster-postgres and dagster-dg-cli once could not be installed beside the
pinned core (they had no release of its version); the first test fails as soon
as the pins of Dagster's packages drift apart again. The second runs the `dg`
CLI's own check of the code location, as a team's CI would.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = Path(__file__).resolve().parents[1]
# Dagster's libraries carry 0.(minor + 16).patch beside the core's 1.minor.patch
LIBRARY_MINOR_OFFSET = 16


def pins() -> dict[str, str]:
    found = {}
    for line in (PROJECT / "constraints.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if version:
            found[canonicalize_name(name)] = version.strip()
    return found


def test_dagster_packages_come_from_one_release_line():
    pinned = pins()
    core = pinned["dagster"]
    major, minor, patch = (int(x) for x in core.split("."))
    library = f"0.{minor + LIBRARY_MINOR_OFFSET}.{patch}"
    dagster = {n: v for n, v in pinned.items() if n.startswith("dagster")}
    assert {"dagster-postgres", "dagster-dg-cli", "dagster-webserver"} <= set(dagster)
    off_line = {n: v for n, v in dagster.items() if v not in (core, library)}
    assert off_line == {}, f"not on the {core} / {library} line: {off_line}"
    # and every installed Dagster package accepts the pinned versions of the others
    broken = []
    for name in dagster:
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            other = canonicalize_name(requirement.name)
            accepted = requirement.specifier.contains(pinned.get(other, ""), prereleases=True)
            if other in dagster and requirement.marker is None and not accepted:
                broken.append(f"{name} requires {text}, pinned {pinned[other]}")
    assert broken == []
    assert major == 1


def test_dg_checks_the_code_location(tmp_path):
    """`dg check defs` loads `churn_platform.definitions` through [tool.dg] in pyproject.toml."""
    dg = Path(sys.executable).parent / "dg"
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    done = subprocess.run(
        [str(dg), "check", "defs"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "All definitions loaded successfully" in output
    assert not re.search(r"virtual environment does not match", output), output
