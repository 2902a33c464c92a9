"""Public data sets that tests and benchmarks replay, found locally or fetched on first use.

`cdnow_master_path()` is CDNOW_master.txt, real purchases of a CD retailer
(69,659 rows, 23,570 customers, 1997-01-01 to 1998-06-30) shipped inside the
`lifetimes` package (0.11.3). The package is not a dependency of this
project (it pins old pandas and autograd, and importing it can fail with a
new scipy), so the file is taken, without importing `lifetimes`:

1. from an installed `lifetimes` distribution, if there is one;
2. else from the cache, `var/public-data/lifetimes-0.11.3/CDNOW_master.txt`;
3. else from the wheel, which `python -m pip download lifetimes==0.11.3
   --no-deps` fetches from the package index pip is configured with; only
   the one file is extracted, checked against its SHA-256, then cached.

How CDNOW maps onto the event contract is written once, here, as the options
a user types (`CDNOW_REPLAY_OPTIONS`) and as the same thing in code
(`cdnow_mapping()` with `CDNOW_FILE_FORMAT`). Benchmarks import these as
`from churn_platform.testing.public_data import ...`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# the project's checkout (an editable install, as `make` makes it)
REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / "var" / "public-data"

LIFETIMES = "lifetimes"
LIFETIMES_VERSION = "0.11.3"
CDNOW_MEMBER = "lifetimes/datasets/CDNOW_master.txt"
CDNOW_SHA256 = "eff6889ed364c5199d6eacbbeb7a6d559971df4406ac876f322c373f00a072ef"


class PublicDataError(RuntimeError):
    """A public data set could not be found or fetched; the message says what was tried."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _installed(member: str) -> Path | None:
    """`member` of an installed `lifetimes`, found from its metadata, never imported."""
    try:
        distribution = importlib.metadata.distribution(LIFETIMES)
    except importlib.metadata.PackageNotFoundError:
        distribution = None
    if distribution is not None:
        for file in distribution.files or ():
            if file.as_posix().lower() == member.lower():
                path = Path(distribution.locate_file(file))
                if path.is_file():
                    return path
    spec = importlib.util.find_spec(LIFETIMES)  # finds the package without running it
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root).parent / member
        if path.is_file():
            return path
    return None


def _download_member(member: str, target: Path, sha256: str) -> None:
    """Fetch the `lifetimes` wheel with pip and extract `member` to `target` (atomically)."""
    with tempfile.TemporaryDirectory(prefix="public-data-") as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            f"{LIFETIMES}=={LIFETIMES_VERSION}",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            "--dest",
            tmp,
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            output = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise PublicDataError(
                f"could not download {LIFETIMES}=={LIFETIMES_VERSION} for {Path(member).name} "
                f"(`{' '.join(command[2:])}` exited {done.returncode}: {' '.join(output)}); "
                f"install it (`pip install {LIFETIMES}=={LIFETIMES_VERSION} --no-deps`) or put "
                f"the file at {target}"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            names = {n.lower(): n for n in wheel.namelist()}
            if member.lower() not in names:
                raise PublicDataError(f"{wheels[0].name} has no {member}")
            data = wheel.read(names[member.lower()])
    if hashlib.sha256(data).hexdigest() != sha256:
        raise PublicDataError(f"{member} from the {LIFETIMES} wheel does not have SHA-256 {sha256}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    partial.write_bytes(data)
    os.replace(partial, target)  # another process fetching the same file writes the same bytes


def cdnow_master_path() -> Path:
    """The path of CDNOW_master.txt (see the module docstring for where it comes from)."""
    installed = _installed(CDNOW_MEMBER)
    if installed is not None:
        return installed
    cached = CACHE_DIR / f"{LIFETIMES}-{LIFETIMES_VERSION}" / Path(CDNOW_MEMBER).name
    if cached.is_file() and _sha256(cached) == CDNOW_SHA256:
        return cached
    _download_member(CDNOW_MEMBER, cached, CDNOW_SHA256)
    return cached


def cdnow_events():
    """CDNOW's purchases as lake events, in file order: `cdnow-<line>` ids, each a
    `purchase` with its dollars as the value and `{"number_of_cds": n}` as attributes."""
    import polars as pl

    rows = [line.split() for line in cdnow_master_path().read_text().splitlines()]
    rows = [r for r in rows if len(r) == 4 and r[0].isdigit()]
    raw = pl.DataFrame(
        rows, schema=["customer_id", "date", "number_of_cds", "dollar_value"], orient="row"
    )
    return raw.with_row_index("n").select(
        pl.format("cdnow-{}", pl.col("n")).alias("event_id"),
        "customer_id",
        pl.lit("purchase").alias("event_type"),
        pl.col("date").str.strptime(pl.Datetime("ms", "UTC"), "%Y%m%d").alias("ts"),
        pl.col("dollar_value").cast(pl.Float64).alias("value"),
        pl.concat_str(pl.lit('{"number_of_cds": '), "number_of_cds", pl.lit("}")).alias(
            "attributes"
        ),
    )


# CDNOW_master.txt: " 00001 19970101  1   11.77" (customer, date, CDs, dollars), a header line
CDNOW_REPLAY_OPTIONS = (
    *("--format", "csv", "--separator", "whitespace"),
    *("--customer-id-column", "customer_id", "--ts-column", "date", "--ts-format", "%Y%m%d"),
    *("--event-type", "purchase", "--value-column", "dollar_value"),
    *("--attribute-columns", "number_of_cds"),
)
CDNOW_FILE_FORMAT = {"fmt": "csv", "separator": "whitespace"}


def cdnow_mapping():
    """`CDNOW_REPLAY_OPTIONS` as a `ReplayMapping` (read with `CDNOW_FILE_FORMAT`)."""
    from churn_platform.events.replay import ReplayMapping

    return ReplayMapping(
        customer_id_column="customer_id",
        ts_column="date",
        ts_format="%Y%m%d",
        event_type="purchase",
        value_column="dollar_value",
        attribute_columns=("number_of_cds",),
    )
