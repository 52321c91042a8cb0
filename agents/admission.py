"""The worker's side of k-anonymity (`pipeline/admission.py`): it loads the admission epochs, learns which
candidate values have reached k installations, and writes the next epoch with those it has seen since.

A candidate reaches ClickHouse only as a keyed hash, so a worker can admit a value only when it sees the
value itself again: each flush looks at its own candidates (raw values still in memory) and proposes those
whose hash is ready; the next refresh writes them as a new epoch. Any worker may write an epoch; two that
write the same epoch number at once are deduplicated (the first one's rows are the epoch), and the other
proposes its values again for the next one.
"""

from __future__ import annotations

import logging

from agents.clickhouse import ClickHouseThread
from pipeline.admission import Admissions, Keys
from pipeline.config import Settings
from pipeline.rollup import PartitionRollup
from pipeline.sink import ClickHouseSink

log = logging.getLogger(__name__)


class Admitter:
    def __init__(self, settings: Settings, sink: ClickHouseSink, clickhouse: ClickHouseThread, keys: Keys):
        self.k = settings.k_anonymity
        self.sink = sink
        self.clickhouse = clickhouse
        self.keys = keys
        self.admissions = Admissions()
        self._ready: set[tuple[str, int]] = set()  # (field, value hash) of candidates with k installations
        self._proposed: dict[tuple[str, str], int] = {}  # (field, value) -> value hash, seen since

    async def refresh(self) -> bool:
        """Write the proposals as the next epoch, then load the epochs and the ready candidates; True
        when a newer epoch was loaded."""
        if self._proposed:
            epoch = self.admissions.latest + 1
            await self.clickhouse.call(self.sink.admit, epoch, [(*key, h) for key, h in self._proposed.items()])
        latest = self.admissions.latest
        self.admissions = Admissions(await self.clickhouse.call(self.sink.admitted))
        admitted = {(row.field, row.value) for row in self.admissions.rows}
        if self._proposed.keys() & admitted:
            log.info(
                "admitted after %d distinct installations: %d values (epoch %d)",
                self.k,
                len(self._proposed.keys() & admitted),
                self.admissions.latest,
            )
        self._proposed = {key: h for key, h in self._proposed.items() if key not in admitted}
        self._ready = await self.clickhouse.call(self.sink.ready_candidates, self.k)
        return self.admissions.latest > latest

    def consider(self, rollup: PartitionRollup) -> None:
        """After a flush: propose its candidates whose hash is ready (at most `max_new_values_per_flush`
        per window and field: the cardinality guard bounds them)."""
        if not self._ready:
            return
        for _, field, value in rollup.candidates:
            value_hash = self.keys.value(field, value)
            if (field, value_hash) in self._ready:
                self._proposed[(field, value)] = value_hash
