"""Live progress of a local run: worker processes add counts, the launcher reads their sum.

The launcher (`pipeline.job.run_job`) creates a directory and names it in the environment
variable `IGBEAM_PROGRESS_DIR` before the pipeline starts. Every worker process that inherits it
(the DirectRunner in-process or with `multi_processing`, a local Dask cluster) keeps one small
JSON file of running counts there, rewritten at most every `WRITE_INTERVAL` seconds. Remote
workers (Dataflow, Flink) have no such directory, and there the same numbers are Beam metrics
(`transforms.constants`). Without the variable, `report` costs one dictionary lookup.

Pure Python: no Beam, no TensorFlow.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import Counter

__all__ = ["ENV_VAR", "FIELDS", "flush", "read_progress", "report"]

ENV_VAR = "IGBEAM_PROGRESS_DIR"
FIELDS = ("bytes_read", "records_read", "read_dead_letters", "examples_attributed", "dead_letters")
WRITE_INTERVAL = 0.5


class _ProcessProgress:
    """This process's counts, kept in one file of the progress directory."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, f"{os.getpid()}-{uuid.uuid4().hex}.json")
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.written = 0.0

    def add(self, counts: dict[str, int]) -> None:
        with self.lock:
            self.counts.update(counts)
            if time.monotonic() - self.written >= WRITE_INTERVAL:
                self._write()

    def _write(self) -> None:
        self.written = time.monotonic()
        temporary = f"{self.path}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as f:
                json.dump(dict(self.counts), f)
            os.replace(temporary, self.path)
        except OSError:  # the directory is gone (the run ended) or not writable: no progress
            pass

    def flush(self) -> None:
        with self.lock:
            self._write()


_current: _ProcessProgress | None = None
_current_lock = threading.Lock()


def _progress() -> _ProcessProgress | None:
    global _current
    directory = os.environ.get(ENV_VAR)
    if not directory:
        return None
    current = _current
    if current is None or current.directory != directory:
        if not os.path.isdir(directory):  # e.g. a remote worker: the launcher's directory is local
            return None
        with _current_lock:
            if _current is None or _current.directory != directory:
                _current = _ProcessProgress(directory)
            current = _current
    return current


def report(**counts: int) -> None:
    """Adds counts (names from `FIELDS`) to this process's progress, when a launcher reads it."""
    progress = _progress()
    if progress is not None:
        progress.add(counts)


def flush() -> None:
    """Writes this process's counts now (e.g. at the end of a bundle)."""
    progress = _progress()
    if progress is not None:
        progress.flush()


def read_progress(directory: str) -> dict[str, int]:
    """The sum of every worker process's counts in `directory` (unreadable files are skipped)."""
    total: Counter[str] = Counter()
    try:
        names = os.listdir(directory)
    except OSError:
        return dict.fromkeys(FIELDS, 0)
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                total.update(json.load(f))
        except (OSError, ValueError):
            continue
    return {field: int(total.get(field, 0)) for field in FIELDS}
