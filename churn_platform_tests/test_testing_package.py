"""`churn_platform.testing` serves the tests and the benchmarks and nothing else.

The platform's runtime never imports it (not the code location, not the
command line, not lazily inside a function); importing it starts nothing and
it never imports pytest; the benchmarks reach it as an installed package, never by
putting the checkout on `sys.path`, and never import the tests.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import churn_platform
import churn_platform.testing

PROJECT = Path(__file__).resolve().parents[1]
PACKAGE = Path(churn_platform.__file__).parent
TESTING = "churn_platform.testing"


def imported_names(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_runtime_module_imports_the_testing_package():
    testing_dir = Path(churn_platform.testing.__file__).parent
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(n for n in imported_names(path) if TESTING in n)
        for path in PACKAGE.rglob("*.py")
        if testing_dir not in path.parents
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_code_location_and_the_cli_load_without_it():
    code = (
        "import json, sys\n"
        "import churn_platform.definitions, churn_platform.cli\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('churn_platform.'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=240
    )
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert "churn_platform.definitions" in loaded
    assert [m for m in loaded if m.startswith(TESTING)] == []


def test_its_modules_import_without_pytest_and_without_work():
    testing_dir = Path(churn_platform.testing.__file__).parent
    for path in testing_dir.glob("*.py"):  # scikit-learn imports pytest when it is installed
        assert not [n for n in imported_names(path) if n.split(".")[0] == "pytest"], path.name
    modules = sorted(f"{TESTING}.{path.stem}" for path in testing_dir.glob("*.py"))
    assert f"{TESTING}.lakes" in modules
    code = (
        "import importlib, json, threading\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps({'threads': threading.active_count()}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=240
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"threads": 1}


def test_benchmarks_import_packages_not_the_tests_or_the_checkout():
    for path in sorted((PROJECT / "benchmarks").glob("*.py")):
        names = imported_names(path)
        assert not [n for n in names if n.startswith("churn_platform_tests")], path.name
        assert "sys.path" not in path.read_text(), path.name
