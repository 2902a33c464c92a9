"""A replay input resolved: its files, each bound to the mapping, read batch by batch."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from churn_platform.events.replay.messages import Bound, bind
from churn_platform.events.replay.options import ReplayInput, SubscriptionMapping
from churn_platform.events.replay.sources import (
    Batch,
    Source,
    file_columns,
    read_batches,
    resolve_sources,
)


class Input:
    """The files of one `ReplayInput`, every one bound to its mapping when this is made.

    Binding reads each file's columns (CSV header, Parquet schema, the first
    block of JSON Lines), so a column missing from any file fails here, before
    the cluster is contacted and before anything is produced.
    """

    def __init__(self, spec: ReplayInput) -> None:
        self.spec = spec
        self.mapping = spec.mapping
        self.sources = resolve_sources(spec.path, spec.fmt, spec.separator)
        self.bounds: dict[Source, Bound] = {
            s: bind(spec.mapping, file_columns(s), s.name, spec.option) for s in self.sources
        }

    @property
    def is_subscriptions(self) -> bool:
        return isinstance(self.mapping, SubscriptionMapping)

    @property
    def name(self) -> str:
        return str(self.spec.path)

    def batches(
        self,
        batch_rows: int,
        limit: int | None,
        columns: Callable[[Bound], list[str]] = Bound.columns,
    ) -> Iterator[tuple[Source, Bound, Batch]]:
        """Every batch of every file, up to `limit` rows in all, with the `columns` of its binding."""
        rows = 0
        for source in self.sources:
            remaining = None if limit is None else limit - rows
            if remaining is not None and remaining <= 0:
                return
            bound = self.bounds[source]
            for batch in read_batches(source, columns(bound), batch_rows, remaining):
                rows += batch.rows
                yield source, bound, batch
