"""`python -m bench.value_rules`: the value rules' worst case per entry point, on adversarial inputs.

Every entry point that judges a client's string (the SDK client's payload builders, `clean_value`,
`clean_flag_name`, the worker's projector) runs once on every adversarial shape (`shapes`: a prefix the
rules look for, a long run of one character or of a repeated unit, one ending character) at the scan
length; its worst shape is then timed again, best of 5, at each length asked for. Only entry points that
every version of the rules has, so that the same command measures before and after a change:

    .venv/bin/python -m bench.value_rules --scan 1000 --at 256,4000,40000

`tests/test_value_rules_linear.py` holds every rule and pattern to a budget on these shapes.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace

from kern_telemetry_client import contract, payloads
from kern_telemetry_client.values import clean_flag_name, clean_value

from pipeline.admission import Keys
from pipeline.projector import EventProjector, Tally
from pipeline.rejections import Rejection

#: A character of each class the rules' patterns accept or reject (letters, hex digits, digits, the
#: separators of model ids, addresses and paths, whitespace, what no rule accepts, non-ASCII).
CHARS = ("a", "Z", "f", "0", "9", ".", "-", "_", ":", "/", "@", " ", "+", "~", "\\", "%", "!", "\n", "é")
#: What the rules look for first: nested prefixes of fine-tunes, ARNs, Google Cloud resources, addresses,
#: URLs, tokens, flags, versions and model families.
PREFIXES = (
    "",
    "ft:",
    "ft:a:",
    "a:ft-",
    "arn:",
    "arn:aws:",
    "arn:aws:b:r:1:",
    "arn:aws:b:r::foundation-model/",
    "arn:aws:b:r:1:inference-profile/us.",
    "projects/",
    "projects/p/locations/l/",
    "projects/p/locations/l/publishers/",
    "projects/p/locations/l/publishers/g/models/",
    "publishers/",
    "publishers/g/models/",
    "a/",
    "@",
    "a@",
    "://",
    "a://",
    "bearer ",
    "token ",
    "sk-",
    "ghp_",
    "glpat-",
    "xoxb-",
    "AKIA",
    "AIza",
    "hf_",
    "has_",
    "v",
    "1.",
    "1.2.3-",
    "1.2.3+",
    "llama",
    "gpt-",
    "qwen",
    "us.",
    "::",
    "fe80::",
    "10.0.0.",
    "C:\\",
    "~/",
    "/home/",
    "localhost:",
)
#: Repeated separators and prefixes.
UNITS = (
    "a.",
    "a:",
    "a/",
    "a-",
    "a@",
    "1.",
    "a1",
    "a ",
    "/a",
    "::",
    "a.b",
    "ft:",
    "arn:aws:",
    "projects/",
    "publishers/",
    "bearer ",
    "@a.",
    "a://",
    "0:",
    "f:",
)
SCAN_LENGTH = 1000
REPEAT = 5


def shapes() -> Iterator[tuple[str, str, str]]:
    """(prefix, body, end): every prefix, then a run of one character or a repeated unit, then one ending
    character (or none)."""
    for prefix in PREFIXES:
        for body in itertools.chain(CHARS, UNITS):
            for end in ("", *CHARS):
                yield prefix, body, end


def shaped(length: int, prefix: str, body: str, end: str) -> str:
    """The shape as a string of exactly `length` characters."""
    run = prefix + body * ((length - len(prefix)) // len(body) + 1)
    return run[: length - len(end)] + end


def slowest_shapes(judge: Callable[[str], object], length: int, count: int = 1) -> list[tuple[str, str, str]]:
    """The `count` shapes that took `judge` longest at `length`, each tried once, slowest first."""
    timed = []
    for shape in shapes():
        value = shaped(length, *shape)
        start = time.perf_counter()
        judge(value)
        timed.append((time.perf_counter() - start, shape))
    return [shape for _, shape in heapq.nlargest(count, timed)]


#: A rule: a factory of a callable that judges one string. The scan calls one callable on every shape; each
#: timing of the worst shape gets a fresh one, so a cache never answers for the rule.
Rule = Callable[[], Callable[[str], object]]


def best_time(rule: Rule, value: str) -> float:
    """The best of REPEAT timings of `rule` on `value`, each with a fresh callable."""
    best = float("inf")
    for _ in range(REPEAT):
        judge = rule()
        start = time.perf_counter()
        judge(value)
        best = min(best, time.perf_counter() - start)
    return best


def _client_run() -> Callable[[str], object]:
    payloads._names.clear()
    ids = payloads.Identifiers(bytes(32))

    def build(value: str) -> dict:
        model = SimpleNamespace(provider=value, name=value, id=value)
        return payloads.run_event(
            contract.AGENT, SimpleNamespace(model=model, parser_model=model), value, value, "1.0.0", ids
        )

    return build


def _client_launch() -> Callable[[str], object]:
    payloads._names.clear()
    ids = payloads.Identifiers(bytes(32))
    return lambda value: payloads.launch_event(
        SimpleNamespace(id=value, interfaces=[SimpleNamespace(type=value)]), "1.0.0", ids
    )


def _worker(event: Callable[[str], dict]) -> Rule:
    """The worker's projector on one event carrying the string where `event` puts it."""

    def make() -> Callable[[str], object]:
        projector = EventProjector(60, 3600, 300, 1 << 22, keys=Keys(b"bench"))
        now_ms = int(time.time() * 1000)

        def project(value: str) -> object:
            try:
                return projector.project(json.dumps(event(value)).encode(), now_ms, Tally())
            except Rejection as rejection:
                return rejection

        return project

    return make


def _run(data: dict, sdk_version: str = "1.0.0") -> dict:
    return {"type": contract.AGENT, "session_id": "s", "sdk_version": sdk_version, "data": data}


RULES: dict[str, Rule] = {
    "client run_event (model provider, name, id; ids)": _client_run,
    "client launch_event (interface type; os id)": _client_launch,
    "clean_value (model_id)": lambda: lambda value: clean_value(value, "model_id"),
    "clean_value (model_provider)": lambda: lambda value: clean_value(value, "model_provider"),
    "clean_value (sdk_version)": lambda: lambda value: clean_value(value, "sdk_version"),
    "clean_flag_name": lambda: clean_flag_name,
    "worker: model_id": _worker(lambda value: _run({"model_id": value})),
    "worker: parser_model.model_id": _worker(lambda value: _run({"parser_model": {"model_id": value}})),
    "worker: model_provider": _worker(lambda value: _run({"model_provider": value})),
    "worker: sdk_version": _worker(lambda value: _run({}, sdk_version=value)),
    "worker: flag name": _worker(lambda value: _run({f"has_{value}": True})),
    "worker: launch interface": _worker(lambda value: {"type": contract.OS, "data": {"interfaces": [value]}}),
    "worker: client report reason": _worker(
        lambda value: {"type": contract.CLIENT_REPORT, "sdk_version": "1.0.0", "data": {"dropped": {value: 1}}}
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", type=int, default=SCAN_LENGTH, help="the length every shape is tried at")
    parser.add_argument("--at", default="256,4000,40000", help="lengths the worst shape is timed at")
    args = parser.parse_args()
    lengths = [int(length) for length in args.at.split(",")]
    print(f"{'rule':52} {'worst shape (prefix, body, end)':48}" + "".join(f"{n:>12,}" for n in lengths))
    for name, rule in RULES.items():
        shape = slowest_shapes(rule(), args.scan)[0]
        times = [best_time(rule, shaped(length, *shape)) for length in lengths]
        print(f"{name:52} {repr(shape)[:48]:48}" + "".join(f"{t * 1e3:10.3f}ms" for t in times), flush=True)


if __name__ == "__main__":
    main()
