"""churn_platform.definitions: every domain's factory is called the same way."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

from churn_platform.definitions import DOMAINS
from churn_platform.defs.features.definitions import START_DATE_ENV, features_partitions

UNIFORM = [
    ("partitions", inspect.Parameter.KEYWORD_ONLY, None),
    ("environ", inspect.Parameter.KEYWORD_ONLY, None),
]


def test_every_domain_factory_takes_the_same_keyword_only_arguments():
    for domain in DOMAINS:
        parameters = inspect.signature(domain).parameters.values()
        assert [(p.name, p.kind, p.default) for p in parameters] == UNIFORM, domain.__qualname__


def test_the_partitioned_domains_share_the_partitions_they_are_given():
    environ = {START_DATE_ENV: "2024-01-01"}
    partitions = features_partitions(environ)
    for domain in DOMAINS:
        definitions = domain(partitions=partitions, environ=environ)
        for asset in definitions.assets or []:
            assert asset.partitions_def in (None, partitions), asset.key


# Every run's process loads the code location before its first step; an extract needs none of
# these, and the features, scores and training steps import what they use when they run.
HEAVY_LIBRARIES = ("apache_beam", "sklearn", "skops", "matplotlib", "scipy")


def test_loading_the_code_location_leaves_the_heavy_libraries_to_the_steps(tmp_path):
    code = (
        "import json, sys\n"
        "from churn_platform.definitions import defs\n"
        "defs()\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY_LIBRARIES)!r})))\n"
    )
    env = {**os.environ, START_DATE_ENV: "2024-01-01", "CHURN_LAKE": str(tmp_path / "lake")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=240,
        env=env,
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
