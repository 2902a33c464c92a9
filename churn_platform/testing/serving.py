"""A champion to score with and the `churn-platform serve` command, for tests and benchmarks.

`register_champion` saves a trained candidate as a new model version whose gate
is marked passed without being checked (the tests and benchmarks that use it
measure scoring, not the gate) and promotes it. `serve_command` is the command
line of a scorer in its own process; the caller starts it with
KAFKA_BOOTSTRAP_SERVERS in its environment.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from churn_platform.lake.store import Lake
from churn_platform.ml import registry


def register_champion(
    lake: Lake, trained, *, token: str | None = None, reason: str = "test", card: str = "test model"
) -> str:
    """Save `trained.candidate` (a `train_models` result) ungated and promote it; its version."""
    version = registry.new_version(token=token)
    registry.save_model(
        lake,
        version,
        trained.candidate,
        features=trained.features,
        metrics=trained.metrics,
        gate={"passed": True, "reasons": [f"{reason}: not gated"]},
        training={},
        card=card,
    )
    registry.promote(lake, version, reason=reason)
    return version


def serve_command(
    topic: str,
    scores_topic: str,
    group: str,
    *,
    lake: Lake | None = None,
    log_interval: float = 1,
    extra: Sequence[str] = (),
) -> list[str]:
    """`churn-platform serve` from `topic` to `scores_topic` as consumer `group` (this Python).

    Without `lake` the scorer takes CHURN_LAKE from its environment.
    """
    return [
        sys.executable,
        "-m",
        "churn_platform.cli",
        "serve",
        *("--topic", topic, "--scores-topic", scores_topic, "--group", group),
        *(("--lake", lake.uri) if lake is not None else ()),
        *("--log-interval", str(log_interval)),
        *extra,
    ]
