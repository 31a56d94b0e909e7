"""What `igbeam` prints: its own lines and the warnings that matter, not native log spam.

Two pieces, both used by the command line and the demo:

* `quiet_native_logs()`: TensorFlow's C++ code (and gRPC's) logs through absl straight to file
  descriptor 2 at import and at device probing (oneDNN notices, "Could not find cuda drivers",
  "failed call to cuInit", "All log messages before absl::InitializeLog()..."), and no
  environment variable silences all of it (`TF_CPP_MIN_LOG_LEVEL` misses the absl lines). So
  while a command runs, descriptor 2 is a pipe read by a thread that drops those lines
  (`is_native_noise`) and forwards everything else: Python warnings, tracebacks, igbeam's own
  lines. Worker processes inherit the descriptor, so their noise is dropped too; so is one
  warning Beam relays from each local worker ("No semi_persistent_directory found"). `--verbose`
  turns the filters off.
* `ProgressPrinter`: a thread that prints one line every few seconds while a local run goes on,
  from the counts worker processes leave in the run's progress directory
  (`transforms.progress`); silent for runs shorter than its interval.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from transforms.progress import read_progress

__all__ = ["ProgressPrinter", "format_progress", "is_native_noise", "quiet_native_logs"]

_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"
# glog/absl ("I0000 00:00:1796094424.456355    9685 port.cc:153] ...") and TensorFlow's older
# format ("2025-09-17 14:44:05.157831: I external/.../cudart_stub.cc:32] ...").
_NATIVE = re.compile(
    r"^(?:([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w./-]+:\d+\]"
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) [\w./-]+:\d+\])"
)
# Native errors that only say a GPU stack is absent or registered twice: noise on a CPU machine.
_HARMLESS_ERRORS = re.compile(
    r"failed call to cuInit|Unable to register cu(DNN|FFT|BLAS) factory|"
    r"computeCapability|cuda_dnn|cuda_fft|cuda_blas"
)


# Warnings Beam relays from its local worker processes that no user can act on.
_BEAM_WORKER_NOISE = ("No semi_persistent_directory found",)
_BEAM_WORKER_LOGGER = "apache_beam.runners.portability.local_job_service"


class _DropBeamWorkerNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in _BEAM_WORKER_NOISE)


# Continuation lines of multi-line native records whose first line is dropped.
_CONTINUATIONS = ("To enable the following instructions:",)


def is_native_noise(line: str) -> bool:
    """Whether `line` is native (C++) log noise: info/warning lines, harmless GPU errors."""
    if line.startswith(_ABSL_PREAMBLE) or line.startswith(_CONTINUATIONS):
        return True
    match = _NATIVE.match(line)
    if match is None:
        return False
    level = match.group(1) or match.group(2)
    return level in ("I", "W") or (level == "E" and bool(_HARMLESS_ERRORS.search(line)))


def _pump(read_fd: int, write_fd: int, keep: Callable[[str], bool]) -> None:
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            out = b"".join(line + b"\n" for line in lines if keep(line.decode("utf-8", "replace")))
            if out:
                os.write(write_fd, out)
        if pending and keep(pending.decode("utf-8", "replace")):
            os.write(write_fd, pending)


def _flush_c_stdio() -> None:
    with contextlib.suppress(Exception):  # no C library to ask: nothing buffered there to lose
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def quiet_native_logs(enabled: bool = True) -> Iterator[None]:
    """Drops native log noise from file descriptor 2 while the block runs (see module doc).

    Args:
      enabled: False leaves descriptor 2 alone (`--verbose`).
    """
    if not enabled:
        yield
        return
    sys.stderr.flush()
    beam_filter = _DropBeamWorkerNoise()
    logging.getLogger(_BEAM_WORKER_LOGGER).addFilter(beam_filter)
    saved = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    pump = threading.Thread(
        target=_pump,
        args=(read_fd, saved, lambda line: not is_native_noise(line)),
        name="igbeam-stderr",
        daemon=True,
    )
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        _flush_c_stdio()  # native code may have buffered lines in C's stdio: filter them too
        os.dup2(saved, 2)  # closes the pipe's write end: the pump drains it and stops
        pump.join(timeout=5)
        os.close(saved)
        logging.getLogger(_BEAM_WORKER_LOGGER).removeFilter(beam_filter)


def format_progress(counts: dict[str, int], elapsed: float, total_bytes: int) -> str:
    """One progress line: records read, attributed, dead letters, examples/s, input share, ETA."""
    read = counts["records_read"] + counts["read_dead_letters"]
    dead = counts["read_dead_letters"] + counts["dead_letters"]
    attributed = counts["examples_attributed"]
    rate = attributed / elapsed if elapsed > 0 else 0.0
    line = (
        f"igbeam: {read:,} records read, {attributed:,} attributed, {dead:,} dead letters, "
        f"{rate:,.0f} examples/s"
    )
    done = counts["bytes_read"]
    if total_bytes > 0 and done > 0:
        share = min(done / total_bytes, 1.0)
        line += f", {share:.0%} of input read"
        if share < 1.0:
            eta = elapsed * (1.0 - share) / share
            line += f", ETA {int(eta) // 60}:{int(eta) % 60:02d}"
    return line


class ProgressPrinter:
    """Prints a progress line every `interval` seconds while a run goes on (a context manager).

    Args:
      directory: The run's progress directory (`transforms.progress`).
      total_bytes: The input's total size, for the share read and the ETA.
      interval: Seconds between lines; the first comes after one interval, so short runs print
        nothing.
      stream: Where to print (default: sys.stderr at print time).
    """

    def __init__(
        self, directory: str, total_bytes: int, interval: float, stream: TextIO | None = None
    ) -> None:
        self._directory = directory
        self._total = total_bytes
        self._interval = interval
        self._stream = stream
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="igbeam-progress", daemon=True)
        self.lines = 0

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(self._interval):
            counts = read_progress(self._directory)
            line = format_progress(counts, time.monotonic() - start, self._total)
            print(line, file=self._stream or sys.stderr, flush=True)
            self.lines += 1

    def __enter__(self) -> ProgressPrinter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval + 5)
