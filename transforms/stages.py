"""Busy time per pipeline stage in this process: where a worker's time goes, cheaply.

`timed(stage)` adds the wall time of its block to a process-wide total (a `perf_counter` pair,
~0.1 µs). Stages are measured in the worker thread that runs them, so on an in-process run
their sum, set against the run's wall time, shows what the engine is waiting for; with several
threads or processes each process keeps its own totals. The benchmarks read them
(`snapshot`, `reset`); nothing in a run depends on them.

Stages: ``read`` (TFRecord framing and CRC checks, into blocks), ``decode`` (tfx-bsl decoding,
keys, dense model inputs, validation), ``engine`` (`IntegratedGradients.attribute`, host packing
included), ``results`` (the per-example Arrow batches), ``statistics`` (adding a block to its
accumulator and freezing it), ``parquet`` (writing attributions and dead letters), ``totals``
(merging block results and writing the statistics).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["reset", "snapshot", "timed", "timed_iter"]

T = TypeVar("T")

_lock = threading.Lock()
_seconds: dict[str, float] = {}
_calls: dict[str, int] = {}


@contextlib.contextmanager
def timed(stage: str) -> Iterator[None]:
    """Adds the wall time of the `with` block to `stage`'s total."""
    started = time.perf_counter()
    try:
        yield
    finally:
        _add(stage, time.perf_counter() - started)


def _add(stage: str, seconds: float, calls: int = 1) -> None:
    with _lock:
        _seconds[stage] = _seconds.get(stage, 0.0) + seconds
        _calls[stage] = _calls.get(stage, 0) + calls


def timed_iter(stage: str, items: Iterable[T]) -> Iterator[T]:
    """Yields `items`, adding the time spent producing them (not consuming them) to `stage`."""
    spent = 0.0
    iterator = iter(items)
    try:
        while True:
            started = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                return
            finally:
                spent += time.perf_counter() - started
            yield item
    finally:
        _add(stage, spent)


def snapshot() -> dict[str, dict[str, float]]:
    """{stage: {"seconds": total, "calls": n}} so far in this process."""
    with _lock:
        return {s: {"seconds": _seconds[s], "calls": _calls[s]} for s in _seconds}


def reset() -> None:
    """Forgets the totals (before a measured run)."""
    with _lock:
        _seconds.clear()
        _calls.clear()
