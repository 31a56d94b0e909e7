"""The Beam source for TFRecord files: `transforms.tfrecords`' robust reader, fanned out to workers.

`ReadTFRecords` (applied to the pipeline root) and `ReadTFRecordFiles` (applied to a PCollection
of paths) read every file with `iter_tfrecord_file` through Beam's `FileSystems`, so any Beam
filesystem works (local, gs://...). Both return a `ReadResult`: intact records, and a
`DeadLetter` (stage `STAGE_READ`) for every damaged record or byte span. The reading itself
(framing, CRCs, gzip salvage, resynchronisation) lives in the Beam-free `transforms.tfrecords`.

Metrics, in namespace `METRICS_NAMESPACE`: counters `FILES_READ`, `RECORDS_READ` and
`READ_DEAD_LETTERS`, and the distribution `BYTES_READ` (raw, i.e. compressed, bytes read, one
update per file).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms import progress
from transforms.constants import (
    BYTES_READ,
    DEAD_LETTER_TAG,
    FILES_READ,
    METRICS_NAMESPACE,
    READ_DEAD_LETTERS,
    RECORDS_READ,
)
from transforms.dead_letters import DeadLetter
from transforms.tfrecords import (
    OpenFn,
    Record,
    RecordChunk,
    chunk_length,
    chunk_records,
    iter_tfrecord_file,
)

__all__ = [
    "ReadResult",
    "ReadTFRecordFiles",
    "ReadTFRecords",
    "expand_file_pattern",
    "match_files",
    "open_with_filesystems",
    "read_tfrecord_file",
]
# re-exported for callers that predate the split
__all__ += ["Record", "RecordChunk", "chunk_length", "chunk_records", "iter_tfrecord_file"]


def open_with_filesystems(path: str) -> BinaryIO:
    """Opens `path` on any Beam filesystem (local, gs://...) for raw binary reading.

    Args:
      path: The file's path or URL.

    Returns:
      A binary file object yielding the file's bytes as stored (no decompression, even for
      ".gz": `iter_tfrecord_file` decompresses itself, to salvage damaged gzip data).
    """
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def read_tfrecord_file(path: str) -> Iterator[Record | DeadLetter]:
    """Reads one TFRecord file from any Beam filesystem (e.g. to sample records in the launcher).

    Args:
      path: The file's path or URL (local, gs://...); ".gz" files are read as gzip.

    Returns:
      An iterator over the file's `Record`s and `DeadLetter`s, in file order (see
      `iter_tfrecord_file`).
    """
    return iter_tfrecord_file(path, open_fn=open_with_filesystems)


def match_files(pattern: str | list[str]) -> dict[str, int]:
    """Expands file patterns (globs, local or gs://...) into {path: size in bytes}, sorted.

    Args:
      pattern: A pattern, several patterns separated by commas, or a list of patterns.

    Returns:
      Unique matching paths in sorted order, each with its size.

    Raises:
      ValueError: If nothing matches.
    """
    raw_patterns = pattern.split(",") if isinstance(pattern, str) else list(pattern)
    patterns = [p.strip() for p in raw_patterns if p and p.strip()]
    shown = pattern if isinstance(pattern, str) else ",".join(pattern)
    sizes: dict[str, int] = {}
    for p in patterns:
        # One pattern per call: FileSystems.match picks the filesystem from the first pattern.
        for result in FileSystems.match([p]):
            sizes.update((m.path, int(m.size_in_bytes or 0)) for m in result.metadata_list)
    if not sizes:
        raise ValueError(f"no files match input pattern '{shown}'")
    return dict(sorted(sizes.items()))


def expand_file_pattern(pattern: str | list[str]) -> list[str]:
    """Expands file patterns into a sorted list of unique paths (see `match_files`).

    Raises:
      ValueError: If nothing matches.
    """
    return list(match_files(pattern))


class ReadResult(NamedTuple):
    """The outputs of `ReadTFRecords` and `ReadTFRecordFiles`.

    Attributes:
      records: PCollection of `Record` (of `RecordChunk` when read with a `chunk_size`).
      dead_letters: PCollection of `DeadLetter` (stage `STAGE_READ`).
    """

    records: beam.PCollection
    dead_letters: beam.PCollection


class _ReadFileDoFn(beam.DoFn):
    """Reads one TFRecord file: records on the main output, dead letters on DEAD_LETTER_TAG."""

    def __init__(self, open_fn: OpenFn | None = None, chunk_size: int | None = None) -> None:
        super().__init__()
        self._open_fn = open_fn or open_with_filesystems
        self._chunk_size = chunk_size
        self._records_read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, RECORDS_READ)
        self._dead_letters = beam.metrics.Metrics.counter(METRICS_NAMESPACE, READ_DEAD_LETTERS)
        self._files_read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, FILES_READ)
        self._bytes_read = beam.metrics.Metrics.distribution(METRICS_NAMESPACE, BYTES_READ)

    def process(self, path: str) -> Iterator[Record | RecordChunk | beam.pvalue.TaggedOutput]:
        """Yields the records (or record chunks) of the file at `path` and tagged dead letters."""
        self._files_read.inc()
        n_bytes = 0

        def on_read(n: int) -> None:
            nonlocal n_bytes
            n_bytes += n
            progress.report(bytes_read=n)

        indices: list[int] = []
        offsets: list[int] = []
        payloads: list[bytes] = []
        for item in iter_tfrecord_file(path, open_fn=self._open_fn, on_read=on_read):
            if isinstance(item, DeadLetter):
                self._dead_letters.inc()
                progress.report(read_dead_letters=1)
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, item)
            elif self._chunk_size is None:
                self._records_read.inc()
                progress.report(records_read=1)
                yield item
            else:
                indices.append(item.index)
                offsets.append(item.offset)
                payloads.append(item.data)
                if len(payloads) >= self._chunk_size:
                    self._records_read.inc(len(payloads))
                    progress.report(records_read=len(payloads))
                    yield (path, indices, offsets, payloads)
                    indices, offsets, payloads = [], [], []
        if payloads:
            self._records_read.inc(len(payloads))
            progress.report(records_read=len(payloads))
            yield (path, indices, offsets, payloads)
        self._bytes_read.update(n_bytes)


class ReadTFRecordFiles(beam.PTransform[beam.PCollection[str], ReadResult]):
    """Reads a PCollection of TFRecord file paths.

    Spread the paths over workers first (e.g. `beam.Create(files) | beam.Reshuffle()`), as
    `ReadTFRecords` does.
    """

    def __init__(
        self,
        open_fn: OpenFn | None = None,
        label: str | None = None,
        *,
        chunk_size: int | None = None,
    ) -> None:
        """Initializes the transform.

        Args:
          open_fn: Opens a path for raw binary reading; defaults to `open_with_filesystems`.
          label: Optional transform label.
          chunk_size: When set, the records output holds `RecordChunk`s of up to `chunk_size`
            consecutive records of one file instead of single records (far fewer Beam
            elements; see `chunk_records`).
        """
        super().__init__(label)
        self._open_fn = open_fn
        self._chunk_size = chunk_size

    def expand(self, paths: beam.PCollection[str]) -> ReadResult:
        """Reads the files.

        Args:
          paths: The paths (or URLs) of the files to read.

        Returns:
          The records (or record chunks) and the dead letters (stage `STAGE_READ`).
        """
        read = _ReadFileDoFn(self._open_fn, self._chunk_size)
        outputs = paths | "ReadFile" >> beam.ParDo(read).with_outputs(
            DEAD_LETTER_TAG, main="records"
        )
        return ReadResult(records=outputs.records, dead_letters=outputs[DEAD_LETTER_TAG])


class ReadTFRecords(beam.PTransform[beam.pvalue.PBegin, ReadResult]):
    """Reads a list of TFRecord files, applied to the pipeline root.

    Example::

        result = pipeline | "Read" >> ReadTFRecords(expand_file_pattern("gs://b/*.tfrecord.gz"))
        result.records, result.dead_letters
    """

    def __init__(
        self,
        files: list[str],
        *,
        open_fn: OpenFn | None = None,
        label: str | None = None,
        chunk_size: int | None = None,
    ) -> None:
        """Initializes the transform.

        Args:
          files: Paths of the files to read (see `expand_file_pattern`).
          open_fn: Opens a path for raw binary reading; defaults to `open_with_filesystems`.
          label: Optional transform label.
          chunk_size: Emit `RecordChunk`s of up to `chunk_size` records (see
            `ReadTFRecordFiles`).
        """
        super().__init__(label)
        self._files = list(files)
        self._open_fn = open_fn
        self._chunk_size = chunk_size

    def expand(self, pbegin: beam.pvalue.PBegin) -> ReadResult:
        """Reads the files.

        Args:
          pbegin: The pipeline root.

        Returns:
          The records (or record chunks) and the dead letters (stage `STAGE_READ`).
        """
        return (
            pbegin
            | "CreateFileList" >> beam.Create(self._files)
            | "ReshuffleFiles" >> beam.Reshuffle()
            | "ReadRecords" >> ReadTFRecordFiles(self._open_fn, chunk_size=self._chunk_size)
        )
