"""`make bench-ab BEFORE=<rev> AFTER=<rev>`: the worker of two commits on the same filled topic, in one run.

Each revision is checked out in a git worktree and its worker runs from there (its packages first on the
path, the same virtualenv for the dependencies), writing over HTTP to a ClickHouse of its own. Rounds
alternate between the two, so the machine's drift falls on both; a bare aiokafka consumer measures the
ceiling before and after. The figure to quote is each revision's median rate relative to the ceiling, and
their ratio (after / before).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from rich.console import Console

from bench.run import PARTITIONS, RESULTS, Topic, _drain, run_workers
from devstack.broker import EmbeddedBroker
from devstack.chdb_server import ChdbServerProcess
from devstack.loadgen import EventGenerator
from pipeline.kafka import produce

ROOT = Path(__file__).parent.parent
console = Console()


def checkout(revision: str, into: Path) -> tuple[str, Path]:
    sha = subprocess.run(
        ["git", "rev-parse", "--short", revision], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    tree = into / sha
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), sha], cwd=ROOT, capture_output=True, check=True)
    build_native(tree)
    return sha, tree


def build_native(tree: Path) -> None:
    """A revision's compiled modules (the native fold), built as an install builds them and put in its tree
    (where its worker imports from); revisions before the native fold have none."""
    if not (tree / "pipeline" / "native").exists():
        return
    wheels = tree / "build" / "wheels"
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(tree)]
    subprocess.run(pip, capture_output=True, check=True)
    for wheel in wheels.glob("kern_telemetry-*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(tree, [name for name in archive.namelist() if name.endswith(".so")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", default="HEAD")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="kern-bench-ab-"))
    trees = dict(checkout(revision, workdir) for revision in (args.before, args.after))
    runs: dict[str, list[dict]] = {sha: [] for sha in trees}
    try:
        with EmbeddedBroker(log_path=workdir / "tansu.log") as broker:
            topic = Topic(broker, workdir / "topic")
            console.print(f"producing {args.events:,} events ...")
            ends = produce(topic.settings, EventGenerator(seed=args.seed).events(args.events))
            ceilings = [asyncio.run(_drain(broker.bootstrap_servers, topic.name, args.events))]
            for round_ in range(args.rounds):
                for sha, tree in trees.items():
                    with ChdbServerProcess(str(workdir / f"{sha}-{round_}" / "chdb")) as server:
                        reader = Topic(broker, workdir / f"{sha}-{round_}", name=topic.name, dsn=server.url)
                        reader.env["PYTHONPATH"] = f"{tree}:{tree / 'sdk'}"
                        measured = run_workers(reader, ends, 1, args.events)
                    runs[sha].append(measured)
                    console.print(
                        f"round {round_ + 1}, {sha}: {measured['rate']:,.0f} events/s, "
                        f"{measured['cpu_s_per_1m']:.1f} CPU-s/1M"
                    )
            ceilings.append(asyncio.run(_drain(broker.bootstrap_servers, topic.name, args.events)))
    finally:
        for tree in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    report(args, trees, runs, ceilings)


def report(args, trees: dict, runs: dict[str, list[dict]], ceilings: list[dict]) -> None:
    ceiling = statistics.median(c["rate"] for c in ceilings)
    before, after = trees
    medians = {sha: statistics.median(r["rate"] for r in rows) for sha, rows in runs.items()}
    lines = [
        f"# A/B: {before} ({args.before}) vs {after} ({args.after}), {args.events:,} events, {PARTITIONS} "
        f"partitions, worker -> ClickHouse over HTTP, {args.rounds} alternating rounds",
        "",
        "| revision | events/s per round | median | × ceiling | CPU s / 1M (median) | peak RSS MB (median) |",
        "|---|---|---|---|---|---|",
    ]
    for sha, rows in runs.items():
        rates = ", ".join(f"{r['rate']:,.0f}" for r in rows)
        lines.append(
            f"| {sha} | {rates} | {medians[sha]:,.0f} | "
            f"{medians[sha] / ceiling:.3f} | {statistics.median(r['cpu_s_per_1m'] for r in rows):.1f} | "
            f"{statistics.median(r['rss_mb'] for r in rows):.0f} |"
        )
    ceiling_rates = ", ".join(f"{c['rate']:,.0f}" for c in ceilings)
    lines += [
        "",
        f"- ceiling (bare aiokafka consumer, before and after the rounds): {ceiling_rates} events/s",
        f"- {after} relative to {before}: {medians[after] / medians[before]:.3f} (target >= 0.95)",
    ]
    console.print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    (RESULTS / f"ab-{stamp}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"ab-{stamp}.json").write_text(
        json.dumps({"before": before, "after": after, "runs": runs, "ceilings": ceilings}, indent=2)
    )
    console.print(f"written: bench/results/ab-{stamp}.md, .json")


if __name__ == "__main__":
    main()
