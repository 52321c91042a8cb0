"""The fold alone, in process: `python -m bench.fold [--events 200000] [--rounds 5]`.

Folds load-generator events into a partition's rollup (`PartitionRollup.add`: decode, validate, project,
count, hash the session) in batches of 500, as the worker does after a fetch, with the worker's settings of
the cyclic GC, and prints the CPU-µs per event of each mix: a session per event (the bench's worst case),
sessions of ~8 runs, and the hostile values (`bench.run.hostile_values`). Each round folds the mix twice
with one projector, cold (empty caches) then warm; the figure is the median of the warm folds. What
consuming and flushing cost comes on top: this is the part of the worker's CPU no consumer can save.
Each mix is folded with the native fold (`pipeline/native/fold.c`, the worker's) and with the Python
fold alone, alternating, with the share of the warm folds' events the native fold counted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

from agents.rollup import keep_the_cyclic_gc_off_the_hot_path
from bench.run import hostile_values
from devstack.loadgen import EventGenerator
from pipeline.admission import Keys
from pipeline.projector import EventProjector
from pipeline.rollup import PartitionRollup

_BATCH = 500  # records per `PartitionRollup.add` call (the worker calls it once per partition and fetch)


def fold_us(records: list[SimpleNamespace], rounds: int) -> dict[bool, tuple[float, float, float]]:
    """Per fold (native or not): median CPU-µs per event of the cold and the warm folds of `records`, and
    the share of the warm folds' events the native fold counted."""
    keys = Keys(b"bench-hash-secret-of-the-benchmarks")
    times: dict[bool, tuple[list[float], list[float], list[float]]] = {True: ([], [], []), False: ([], [], [])}
    for _ in range(rounds):
        for native, (cold, warm, shares) in times.items():
            projector = EventProjector(60, 300, 60, 64_000, keys=keys, native=native)
            for into in (cold, warm):
                counted = projector.native_events
                rollup = PartitionRollup("bench", 0, 0)
                start = time.process_time()
                for i in range(0, len(records), _BATCH):
                    rollup.add(records[i : i + _BATCH], projector)
                into.append((time.process_time() - start) / len(records) * 1e6)
            shares.append((projector.native_events - counted) / len(records))
    return {native: tuple(statistics.median(figures) for figures in each) for native, each in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    mixes = {
        "a session per event": list(EventGenerator(seed=args.seed).events(args.events)),
        "sessions of ~8 runs": list(EventGenerator(seed=args.seed, runs_per_session=8).events(args.events)),
        "hostile values": hostile_values(EventGenerator(seed=args.seed), args.events),
    }
    now_ms = int(time.time() * 1000)
    keep_the_cyclic_gc_off_the_hot_path()
    print(f"CPU-µs per event, medians of {args.rounds}")
    print(f"{'mix':22} {'native cold':>12} {'warm':>8} {'share':>7}   {'Python cold':>12} {'warm':>8}  warm ratio")
    for name, values in mixes.items():
        records = [SimpleNamespace(value=v, timestamp=now_ms, offset=i) for i, v in enumerate(values)]
        figures = fold_us(records, args.rounds)
        (cold, warm, share), (python_cold, python_warm, _) = figures[True], figures[False]
        print(
            f"{name:22} {cold:12.2f} {warm:8.2f} {share:7.1%}   {python_cold:12.2f} {python_warm:8.2f}"
            f"  {python_warm / warm:9.2f}×"
        )


if __name__ == "__main__":
    main()
