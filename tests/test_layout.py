"""The layout's rules, read from the source: no import cycle between the project's modules, the runtime
(`pipeline/`, `agents/`, `tables/`, `collector/`) never imports the dev tooling, benchmarks or tests, the
worker never imports the collector, and the SDK client imports nothing but the standard library and
kafka-python."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGES = {
    "pipeline": ROOT / "pipeline",
    "agents": ROOT / "agents",
    "tables": ROOT / "tables",
    "devstack": ROOT / "devstack",
    "bench": ROOT / "bench",
    "collector": ROOT / "collector",
    "kern_telemetry_client": ROOT / "sdk" / "kern_telemetry_client",
}
RUNTIME = ("pipeline", "agents", "tables", "collector")


def project_modules() -> dict[str, Path]:
    modules = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts))
            modules[name.removesuffix(".__init__")] = path
    return modules


MODULES = project_modules()


def imports(name: str) -> set[str]:
    """Every module `name` imports (anywhere in it, functions included), project modules by full name,
    others by top-level name."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                found.add(target if target in MODULES else node.module)
    return {target if target in MODULES else target.split(".")[0] for target in found}


GRAPH = {name: {target for target in imports(name) if target in MODULES} for name in MODULES}


def test_no_module_imports_itself_through_others():
    cycles, visiting, done = [], [], set()

    def visit(module: str) -> None:
        if module in done:
            return
        if module in visiting:
            cycles.append([*visiting[visiting.index(module) :], module])
            return
        visiting.append(module)
        for target in sorted(GRAPH[module]):
            visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(GRAPH):
        visit(module)
    assert cycles == []


def test_the_runtime_never_imports_dev_tooling_benchmarks_or_tests():
    offending = {
        module: sorted(
            target for target in imports(module) if target.split(".")[0] in ("devstack", "bench", "tests", "conftest")
        )
        for module in MODULES
        if module.split(".")[0] in RUNTIME
    }
    assert {module: targets for module, targets in offending.items() if targets} == {}


def test_the_worker_never_imports_the_collector():
    """`kern-telemetry collect` is loaded by name (`pipeline/cli.py`), like the dev tooling's commands."""
    worker = [module for module in MODULES if module.split(".")[0] in ("pipeline", "agents", "tables")]
    assert {
        module: sorted(target for target in imports(module) if target.startswith("collector")) for module in worker
    } == {module: [] for module in worker}


def test_the_sdk_client_imports_only_the_standard_library_and_kafka_python():
    allowed = set(sys.stdlib_module_names) | {"kafka", "kern_telemetry_client"}
    foreign = {
        module: sorted(target for target in imports(module) if target.split(".")[0] not in allowed)
        for module in MODULES
        if module.startswith("kern_telemetry_client")
    }
    assert {module: targets for module, targets in foreign.items() if targets} == {}


def test_the_graph_is_read_from_the_source():  # the checks above see real edges
    assert "pipeline.projector" in GRAPH["pipeline.rollup"] or "pipeline.rejections" in GRAPH["pipeline.rollup"]
    assert "agents.checkpoint" in GRAPH["agents.partitions"]
    assert "devstack.loadgen" in GRAPH["devstack.commands"]
    assert "collector.publisher" in GRAPH["collector.app"] and "pipeline.kafka" in GRAPH["collector.publisher"]
