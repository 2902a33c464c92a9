"""The lake fails under the extract: a full disk, a read-only lake, damaged files and log.

Full and read-only are real, even as root: the lake lives on a small tmpfs mounted in a
private user + mount namespace (`unshare --user --map-root-user --mount`, no privilege
beyond what an ordinary user has), so a write that does not fit fails with ENOSPC and a
read-only remount fails writes with EROFS. The extract runs there through the real
command line (`nsenter` into the namespace); the test looks at the lake through
/proc/<holder>/root and copies it out to read it with the lake's readers.

Each fault must give a clear error naming the path and what to do, leave the transaction
log as it was, leave no temporary file, keep readers' view exactly the committed data, and
once the fault is lifted a rerun must complete with every message exactly once. Damaged
Parquet files and a damaged log must be errors naming the path, never read as empty,
never a restart from offset 0.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from churn_platform.features.inputs import feature_inputs, read_inputs
from churn_platform.ingestion.extract import ExtractConfig, extract_topic
from churn_platform.lake import tables
from churn_platform.lake.raw import extracted_offsets, read_quarantine, read_raw_events
from churn_platform.lake.store import Lake, LakeError
from churn_platform.testing.faults import (
    END,
    REPO,
    Produced,
    assert_exactly_once,
    check_exactly_once,
    check_visible_prefix,
    extract_child_command,
    produce_recorded,
    temp_files,
)

SMALL = {"customers": 20, "days": 15, "bad_fraction": 0.05}


class NamespaceTmpfs:
    """A tmpfs of `size` bytes mounted at `mountpoint` in a private user + mount namespace."""

    def __init__(self, mountpoint, size: int) -> None:
        self.mountpoint = os.fspath(mountpoint)
        os.makedirs(self.mountpoint, exist_ok=True)
        script = (
            f"mount -t tmpfs -o size={size} churn-lake-tmpfs {self.mountpoint} "
            "&& echo ready && exec sleep 600"
        )
        self.holder = subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.holder.stdout.readline().strip()
        if line != "ready":
            self.holder.kill()
            _, err = self.holder.communicate(timeout=10)
            raise RuntimeError(
                "could not mount a tmpfs in a user namespace (unshare --user --map-root-user "
                f"--mount): {err.strip()}; the lake fault tests need unprivileged user "
                "namespaces (sysctl kernel.unprivileged_userns_clone=1)"
            )

    def view(self, relative: str = "") -> str:
        """The path of `relative` (under the mount point) as seen from outside the namespace."""
        return f"/proc/{self.holder.pid}/root{self.mountpoint}/{relative}".rstrip("/")

    def run(self, command: list[str]) -> subprocess.CompletedProcess:
        """Run `command` inside the namespace (where the tmpfs is mounted)."""
        enter = ["nsenter", f"--target={self.holder.pid}", "--user", "--mount", f"--wd={REPO}"]
        enter.append("--")
        return subprocess.run(
            enter + command, cwd=REPO, capture_output=True, text=True, timeout=120
        )

    def sh(self, script: str) -> None:
        done = self.run(["sh", "-c", script])
        assert done.returncode == 0, done.stderr

    def free_bytes(self) -> int:
        stat = os.statvfs(self.view())
        return stat.f_bavail * stat.f_frsize

    def close(self) -> None:
        self.holder.kill()
        self.holder.communicate(timeout=10)


@pytest.fixture
def tmpfs(tmp_path):
    mounted = NamespaceTmpfs(tmp_path / "mnt", size=8 * 1024 * 1024)
    try:
        yield mounted
    finally:
        mounted.close()


def cli_extract(tmpfs: NamespaceTmpfs, settings, topic: str) -> subprocess.CompletedProcess:
    """`churn-platform extract` inside the namespace, on the lake in the tmpfs."""
    command = [sys.executable, "-m", "churn_platform.cli", "extract"]
    command += ["--bootstrap-servers", settings.bootstrap_servers, "--topic", topic]
    return tmpfs.run(command + ["--lake", f"{tmpfs.mountpoint}/lake"])


def extract_in(tmpfs: NamespaceTmpfs, settings, topic: str) -> dict:
    """The same extract_topic, through the lighter child runner (the CLI imports every
    subcommand, seconds on a busy machine); must succeed. Returns its summary."""
    command = extract_child_command(settings.bootstrap_servers, f"{tmpfs.mountpoint}/lake", topic)
    done = tmpfs.run(command)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def logs(tmpfs: NamespaceTmpfs) -> dict[str, int]:
    """The tables' transaction logs (file → size) as they are in the tmpfs."""
    return {
        path: size
        for path, size in listing(tmpfs.view("lake")).items()
        if f"/{tables.LOG_DIR}/" in f"/{path}"
    }


def snapshot(tmpfs: NamespaceTmpfs, target) -> Lake:
    """A copy of the lake as it is in the tmpfs, for the lake's readers."""
    shutil.copytree(tmpfs.view("lake"), target)
    return Lake(target)


def listing(root: str) -> dict[str, int]:
    """Every file under `root` (dot files too) with its size."""
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, root)] = os.path.getsize(path)
    return found


def assert_clear_error(done: subprocess.CompletedProcess, path: str, *phrases: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("churn-platform extract: could not write "), done.stderr
    assert path in done.stderr, done.stderr
    for phrase in phrases:
        assert phrase in done.stderr, done.stderr


def test_full_filesystem_is_a_clear_error_and_a_rerun_completes(
    kafka_settings, topic, tmpfs, tmp_path
):
    produced = Produced()
    produce_recorded(kafka_settings, topic, produced, seed=301, **SMALL)
    extract_in(tmpfs, kafka_settings, topic)
    log_before = logs(tmpfs)

    produce_recorded(kafka_settings, topic, produced, seed=302, customers=60, days=30)
    # fill the filesystem but for a few pages: some of the new files fit, then ENOSPC
    headroom = 24 * 1024
    with open(tmpfs.view("filler"), "wb") as filler:
        filler.write(b"\0" * (tmpfs.free_bytes() - headroom))
    assert tmpfs.free_bytes() <= headroom

    failed = cli_extract(tmpfs, kafka_settings, topic)
    assert_clear_error(
        failed, f"{tmpfs.mountpoint}/lake/", "No space left on device", "is full", "and rerun"
    )
    assert logs(tmpfs) == log_before
    assert temp_files(tmpfs.view("lake")) == []  # the failed writer removed its temp file
    during = snapshot(tmpfs, tmp_path / "during")
    # readers see exactly the first extract's data, whatever the failure left beyond it
    first_offsets = extracted_offsets(during, topic)
    assert check_visible_prefix(during, topic, produced) == sum(first_offsets.values())

    os.remove(tmpfs.view("filler"))  # the fault is lifted
    extract_in(tmpfs, kafka_settings, topic)
    assert_exactly_once(check_exactly_once(snapshot(tmpfs, tmp_path / "after"), topic, produced))


def test_read_only_lake_and_log_are_clear_errors_and_a_rerun_completes(
    kafka_settings, topic, tmpfs, tmp_path
):
    produced = Produced()
    produce_recorded(kafka_settings, topic, produced, seed=311, **SMALL)
    extract_in(tmpfs, kafka_settings, topic)
    lake_dir = f"{tmpfs.mountpoint}/lake"
    raw_log = f"{lake_dir}/{tables.RAW_EVENTS.log_dir}"
    before_log = Path(tmpfs.view(f"lake/{tables.RAW_EVENTS.log_dir}"))
    raw_log_before = sorted(p.name for p in before_log.iterdir())

    # 1. only the raw table's log is read-only: every data file is written (and the
    # quarantine's commit lands), the raw table's commit fails
    produce_recorded(kafka_settings, topic, produced, seed=312, **SMALL)
    tmpfs.sh(f"mount --bind {raw_log} {raw_log} && mount -o remount,ro,bind {raw_log}")
    failed = cli_extract(tmpfs, kafka_settings, topic)
    assert_clear_error(failed, raw_log, "Read-only file system", "remount it")
    assert sorted(p.name for p in before_log.iterdir()) == raw_log_before
    assert temp_files(tmpfs.view("lake")) == []
    during = snapshot(tmpfs, tmp_path / "during")
    # exactly the first run's rows, and this run's rejects: the quarantine committed first
    # (the rerun skips them); this run's event files are there, and invisible
    check_visible_prefix(during, topic, produced)
    quarantined = tables.committed_offsets(during, tables.QUARANTINE, topic)
    assert sum(quarantined.values()) > sum(extracted_offsets(during, topic).values())
    assert len(tables.unreferenced_files(during, tables.RAW_EVENTS)) > 0

    # 2. the whole lake is read-only
    tmpfs.sh(f"umount {raw_log} && mount -o remount,ro {tmpfs.mountpoint}")
    produce_recorded(kafka_settings, topic, produced, seed=313, **SMALL)
    before = listing(tmpfs.view("lake"))
    failed = cli_extract(tmpfs, kafka_settings, topic)
    assert_clear_error(failed, f"{lake_dir}/", "Read-only file system", "remount it")
    assert listing(tmpfs.view("lake")) == before

    # the fault is lifted: the rerun completes, exactly once
    tmpfs.sh(f"mount -o remount,rw {tmpfs.mountpoint}")
    extract_in(tmpfs, kafka_settings, topic)
    assert_exactly_once(check_exactly_once(snapshot(tmpfs, tmp_path / "after"), topic, produced))


# --- damaged files ---------------------------------------------------------------


@pytest.fixture
def extracted(kafka_settings, topic, tmp_path):
    """A lake with one extract of a small simulated topic (5% malformed)."""
    lake = Lake(tmp_path / "lake")
    produced = Produced()
    produce_recorded(kafka_settings, topic, produced, seed=321, **SMALL)
    extract_topic(kafka_settings, lake, ExtractConfig(topic=topic))
    assert_exactly_once(check_exactly_once(lake, topic, produced))
    return lake, produced


def damaged_versions(data: bytes) -> dict[str, bytes]:
    """Truncations and garblings of a Parquet file (bytes XORed, so always changed).

    A data page is garbled in its compressed payload (the last bytes of a column
    chunk), which the page checksums cover; page headers are not covered (their
    statistics can change unnoticed), so garbling them proves nothing.
    """
    import io

    import pyarrow.parquet as pq

    footer_length = int.from_bytes(data[-8:-4], "little")
    footer = len(data) - 8 - footer_length
    row_group = pq.ParquetFile(io.BytesIO(data)).metadata.row_group(0)

    def chunk_end(i: int) -> int:
        column = row_group.column(i)
        start = column.dictionary_page_offset or column.data_page_offset
        return start + column.total_compressed_size

    def garble(start: int, n: int = 16) -> bytes:
        changed = bytearray(data)
        for i in range(start, start + n):
            changed[i] ^= 0x5A
        return bytes(changed)

    return {
        "truncated to half": data[: len(data) // 2],
        "truncated to nothing": b"",
        "last bytes cut": data[:-4],
        "footer garbled": garble(footer),
        "first page header garbled": garble(4),
        "a data page garbled": garble(chunk_end(row_group.num_columns // 2) - 8, 8),
        "last page garbled": garble(chunk_end(row_group.num_columns - 1) - 8, 8),
    }


def test_damaged_parquet_files_are_named_never_read_as_empty(extracted, topic):
    lake, _ = extracted
    as_of = END.date()
    inputs = feature_inputs(lake, as_of)
    raw = max(inputs.window_files, key=lake.size)
    quarantine = max(
        (
            tables.file_path(tables.QUARANTINE, f)
            for f in tables.data_files(lake, tables.QUARANTINE)
        ),
        key=lake.size,
    )
    for target, read, detects_all in (
        (raw, lambda: read_raw_events(lake, [topic]), True),
        (quarantine, lambda: read_quarantine(lake, [topic]), True),
        # polars reads the features' inputs and checks no page checksums: a garbled data
        # page can pass there (docs/operations.md, known limits); truncation and broken structure cannot
        (raw, lambda: read_inputs(lake, inputs), False),
    ):
        original = Path(lake.path(target)).read_bytes()
        for name, damaged in damaged_versions(original).items():
            if not detects_all and name in ("a data page garbled", "last page garbled"):
                continue
            with open(lake.path(target), "wb") as fh:
                fh.write(damaged)
            try:
                read()
            except LakeError as exc:
                assert f"could not read {lake.url(target)}" in str(exc), (name, str(exc))
            else:
                raise AssertionError(f"{target} {name}: read without an error")
        with open(lake.path(target), "wb") as fh:
            fh.write(original)
    assert read_raw_events(lake, [topic]).height > 0  # restored, all readable again


def test_damaged_log_is_named_and_the_extract_never_restarts_from_zero(
    extracted, kafka_settings, topic
):
    """The newest commit of the raw table's log damaged in every way a disk or a person can.

    Unparseable: an error naming the log and the fix, from the extract, every reader and
    the command line, and nothing in the lake changes. Parseable but empty (a commit
    file emptied or replaced by `{}`), or the newest commit removed: the table is the
    version before it, rows and offsets together, so the next extract reads exactly
    that commit's messages again: exactly once, never from offset 0.
    """
    lake, produced = extracted
    produce_recorded(kafka_settings, topic, produced, seed=322, **SMALL)
    extract_topic(kafka_settings, lake, ExtractConfig(topic=topic))  # a second commit
    produce_recorded(kafka_settings, topic, produced, seed=323, **SMALL)  # work for a rerun
    log = tables.RAW_EVENTS.log_dir
    newest = sorted(lake.list_files(log, ".json"))[-1]
    path = lake.path(newest)
    original = Path(path).read_bytes()
    offsets = extracted_offsets(lake, topic)
    files_before = listing(lake.root)
    rng = random.Random(322)
    garbled = bytearray(original)
    for i in rng.sample(range(len(garbled)), 12):
        garbled[i] = rng.randrange(256)
    unreadable = {
        "truncated to half": original[: len(original) // 2],
        "bytes garbled": bytes(garbled),
        "not an object": b"[]",
        "not JSON": b"{not json",
    }
    named = re.escape(lake.url(log))
    for name, damaged in unreadable.items():
        with open(path, "wb") as fh:
            fh.write(damaged)
        with pytest.raises(LakeError, match=named):
            extract_topic(kafka_settings, lake, ExtractConfig(topic=topic))
        assert listing(lake.root) == {**files_before, newest: len(damaged)}, name
        with pytest.raises(LakeError, match=named):
            read_raw_events(lake, [topic])
        with pytest.raises(LakeError, match=named):
            feature_inputs(lake, END.date())

    # the command line says which log and what to do, without a traceback
    with open(path, "wb") as fh:
        fh.write(unreadable["truncated to half"])
    done = subprocess.run(
        [sys.executable, "-m", "churn_platform.cli", "extract", "--topic", topic]
        + ["--bootstrap-servers", kafka_settings.bootstrap_servers, "--lake", lake.root],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert lake.url(log) in done.stderr, done.stderr
    assert "restore _delta_log from a backup" in done.stderr, done.stderr

    # an emptied newest commit reads as the version before it: offsets and rows went
    # back together, never to 0, and the extract reads that commit's messages again
    with open(path, "wb") as fh:
        fh.write(b"")
    back = extracted_offsets(lake, topic)
    assert 0 < sum(back.values()) < sum(offsets.values())
    assert check_visible_prefix(lake, topic, produced) >= sum(back.values())  # + quarantine
    extract_topic(kafka_settings, lake, ExtractConfig(topic=topic))
    assert_exactly_once(check_exactly_once(lake, topic, produced))


def test_the_lake_fault_namespace_really_limits_writes(tmpfs):
    """The mechanism itself: as root outside, the tmpfs is full and read-only inside."""
    name = uuid.uuid4().hex
    full = tmpfs.run(["sh", "-c", f"head -c 9000000 /dev/zero > {tmpfs.mountpoint}/{name}"])
    assert full.returncode != 0 and "No space left on device" in full.stderr
    tmpfs.sh(f"rm {tmpfs.mountpoint}/{name} && mount -o remount,ro {tmpfs.mountpoint}")
    read_only = tmpfs.run(["touch", f"{tmpfs.mountpoint}/{name}"])
    assert read_only.returncode != 0 and "Read-only file system" in read_only.stderr
