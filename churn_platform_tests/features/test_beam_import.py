"""Importing the feature pipeline leaves the process's logging as it found it."""

from __future__ import annotations

import logging
import subprocess
import sys

from churn_platform.features.options import BEAM_IMPORT_NOTE, quiet_beam_import


def test_importing_the_pipeline_prints_nothing_and_installs_no_root_handler():
    # a fresh interpreter: Beam's note is logged only on its first import
    probe = (
        "import logging, churn_platform.features.pipeline\n"
        "print(len(logging.getLogger().handlers), len(logging.getLogger().filters))\n"
        "logging.getLogger('elsewhere').warning('a later warning')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.split() == ["0", "0"]
    assert BEAM_IMPORT_NOTE not in done.stderr
    # with no root handler, a later warning reaches stderr once, through logging's last resort
    assert done.stderr.count("a later warning") == 1
    assert "WARNING:elsewhere" not in done.stderr  # basicConfig's format: no handler was left


def test_only_beams_note_is_dropped_and_the_root_logger_is_restored():
    root = logging.getLogger()
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    before = (list(root.handlers), list(root.filters))
    keep = Keep()
    root.addHandler(keep)
    try:
        with quiet_beam_import():
            inside = (list(root.handlers), len(root.filters))
            logging.warning(f"{BEAM_IMPORT_NOTE}, and bigquery client libraries are not available")
            logging.warning("something else")
        logging.warning(f"{BEAM_IMPORT_NOTE}, outside the block")
    finally:
        root.removeHandler(keep)
    assert seen == ["something else", f"{BEAM_IMPORT_NOTE}, outside the block"]
    assert inside == ([*before[0], keep], len(before[1]) + 1)  # a handler there: no spare one
    assert (list(root.handlers), list(root.filters)) == before
