"""The offset ledger: the next offset to extract per partition, one JSON file per topic.

The ledger, not Kafka's consumer-group offsets, is the source of truth for what
the lake holds: data files beyond it are leftovers of a run that crashed before
committing and are invisible to readers (see `committed`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from churn_platform.lake.paths import ledger_path
from churn_platform.lake.store import Lake, LakeError


class LedgerCorrupt(LakeError):
    """The ledger file exists but cannot be trusted."""


@dataclass(frozen=True)
class Ledger:
    topic: str
    offsets: dict[int, int] = field(default_factory=dict)
    updated_at: str | None = None
    run_id: str | None = None

    def next_offset(self, partition: int) -> int:
        return self.offsets.get(partition, 0)

    def to_json(self) -> bytes:
        body = {
            "topic": self.topic,
            "offsets": {str(p): o for p, o in sorted(self.offsets.items())},
            "updated_at": self.updated_at,
            "run_id": self.run_id,
        }
        return json.dumps(body, indent=2).encode()


def read_ledger(lake: Lake, topic: str) -> Ledger:
    """The topic's ledger; an empty one when none was written yet."""
    relative = ledger_path(topic)
    try:
        raw = lake.read_bytes(relative)
    except FileNotFoundError:
        return Ledger(topic=topic)
    try:
        body = json.loads(raw)
        offsets = {int(p): int(o) for p, o in body["offsets"].items()}
        if body["topic"] != topic or any(p < 0 or o < 0 for p, o in offsets.items()):
            raise ValueError("topic name or offsets out of range")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LedgerCorrupt(
            f"the ledger {lake.url(relative)} is corrupt ({exc}); restore it from a backup, or "
            "delete it together with the topic's lake files to re-extract from the start"
        ) from exc
    return Ledger(
        topic=topic, offsets=offsets, updated_at=body.get("updated_at"), run_id=body.get("run_id")
    )


def write_ledger(
    lake: Lake, topic: str, offsets: dict[int, int], run_id: str | None = None
) -> Ledger:
    """Replace the ledger atomically with `offsets`."""
    ledger = Ledger(
        topic=topic,
        offsets=dict(offsets),
        updated_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
        run_id=run_id,
    )
    lake.write_bytes(ledger_path(topic), ledger.to_json())
    return ledger
