"""The worker's Faust services: the rollup agent (`rollup.py`) and the parts it is made of.

- `fetching.py`: fetching batches, and what to do when a fetch fails;
- `partitions.py`: the state of each assigned partition, and its transitions;
- `checkpoint.py`: the exactly-once protocol, in numbered steps (flush, and resume after an assignment);
- `flushing.py`: when rollups flush, retries, and backpressure;
- `quarantine.py`, `poison.py`: a partition paused before a batch it cannot decode, and the operator's skip;
- `clickhouse.py`, `retry.py`: the thread that owns the ClickHouse client, and the backoff policy.
"""
