"""The gates `make test` runs before any test (`make lint`, `make typecheck`): they pass on this tree, and
each fails on the error it is there for, planted in a copy of the tree (the project's tools through its
.venv, with copies of its mypy caches), and `make test` runs them before pytest."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LONG = "x" * 130


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("tree")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    venv = copy / ".venv"
    venv.mkdir()
    (venv / "bin").symlink_to(ROOT / ".venv" / "bin")  # the scripts' shebangs name the project's interpreter
    for cache in (".mypy_cache", ".mypy_cache-sdk"):
        if (ROOT / ".venv" / cache).is_dir():
            shutil.copytree(ROOT / ".venv" / cache, venv / cache)
    (venv / ".installed").touch()  # newer than pyproject.toml: make installs nothing
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
    subprocess.run(["git", "add", "-A"], cwd=copy, check=True)  # `make lint` greps the tracked files
    return copy


def make(tree: Path, *targets: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-k", *targets], cwd=tree, capture_output=True, text=True, timeout=300)


@pytest.fixture
def planted(tree: Path) -> Iterator:
    """Plant a line at the end of a file of the copy; the file is restored afterwards."""
    saved: dict[Path, str] = {}

    def plant(name: str, text: str) -> None:
        path = tree / name
        saved.setdefault(path, path.read_text())
        path.write_text(saved[path] + text)

    yield plant
    for path, text in saved.items():
        path.write_text(text)


def test_the_gates_pass_on_this_tree(tree):
    result = make(tree, "lint", "typecheck")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All checks passed!" in result.stdout and "already formatted" in result.stdout
    assert result.stdout.count("Success: no issues found") == 2  # the runtime and dev stack; the SDK client


@pytest.mark.parametrize(
    ("name", "text", "target", "said"),
    [
        ("pipeline/health.py", "\n\ndef planted():\n    import json\n", "lint", "F401"),  # unused import
        ("agents/retry.py", "\n\nPLANTED = (1,2)\n", "lint", "Would reformat: agents/retry.py"),
        ("tables/ddl.py", f'\n\nPLANTED = "{LONG}"  # noqa: E501\n', "lint", "say why on the same line"),
        ("collector/app.py", "\n\ndef planted() -> int:\n    return 'one'\n", "typecheck", "collector/app.py"),
        ("sdk/kern_telemetry_client/notice.py", "\n\ndef planted(x):\n    return x\n", "typecheck", "missing a type"),
    ],
    ids=["ruff-rule", "ruff-format", "noqa-without-reason", "mypy", "mypy-strict-sdk"],
)
def test_a_gate_fails_on_its_error(tree, planted, name, text, target, said):
    planted(name, text)
    result = make(tree, target)
    assert result.returncode != 0
    assert said in result.stdout + result.stderr, result.stdout + result.stderr


def test_make_test_runs_the_gates_before_the_tests(tree):
    planned = subprocess.run(  # make prints "Entering directory <tmp>/pytest-..." when the suite runs under make
        ["make", "--no-print-directory", "-n", "test"], cwd=tree, capture_output=True, text=True, check=True
    ).stdout
    steps = [
        next(i for i, line in enumerate(planned.splitlines()) if command in line)
        for command in ("ruff check", "ruff format --check", "git grep", "mypy --cache-dir", "-m pytest")
    ]
    assert steps == sorted(steps), planned
