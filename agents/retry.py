"""How the worker waits after a failure: exponential backoff from 0.5 s to 15 s."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.health import Health

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 15.0


def backoff() -> Iterator[float]:
    delay = BACKOFF_START_S
    while True:
        yield delay
        delay = min(delay * 2, BACKOFF_MAX_S)


async def retry(
    health: Health, component: str, function: Callable, *args: Any, stopping: Callable[[], bool] = lambda: False
) -> Any:
    """`function(*args)` (awaited when it returns a coroutine) until it succeeds; `component` is degraded
    in the health report meanwhile."""
    for delay in backoff():
        try:
            result = function(*args)
            if asyncio.iscoroutine(result):
                result = await result
        except Exception as exc:
            if stopping():
                raise
            health.degrade(component, f"{type(exc).__name__}: {first_line(exc)}")
            await asyncio.sleep(delay)
        else:
            health.recover(component)
            return result
    raise AssertionError("unreachable: backoff() never ends")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""
