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

from transforms import progress, stages
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
    "Block",
    "ReadBlocks",
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


_RECORDS_TAG = "records"


def _select(tagged: tuple[str, object], tag: str) -> Iterator[object]:
    if tagged[0] == tag:
        yield tagged[1]


class _FileBytes:
    """Counts one file's bytes as they are read (progress) and records them when it is done."""

    _files = beam.metrics.Metrics.counter(METRICS_NAMESPACE, FILES_READ)
    _bytes = beam.metrics.Metrics.distribution(METRICS_NAMESPACE, BYTES_READ)

    def __init__(self) -> None:
        self._files.inc()
        self.bytes = 0

    def __call__(self, n: int) -> None:
        self.bytes += n
        progress.report(bytes_read=n)

    def done(self) -> None:
        self._bytes.update(self.bytes)


class _ReadFileDoFn(beam.DoFn):
    """Reads one TFRecord file: ("records", record or chunk) and (DEAD_LETTER_TAG, letter).

    One output of tagged pairs, split by `ReadTFRecordFiles` with one filter per kind: Beam's
    DaskRunner does not route a ParDo's tagged outputs (every consumer sees all of them).
    """

    def __init__(self, open_fn: OpenFn | None = None, chunk_size: int | None = None) -> None:
        super().__init__()
        self._open_fn = open_fn or open_with_filesystems
        self._chunk_size = chunk_size
        self._records_read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, RECORDS_READ)
        self._dead_letters = beam.metrics.Metrics.counter(METRICS_NAMESPACE, READ_DEAD_LETTERS)

    def process(self, path: str) -> Iterator[tuple[str, Record | RecordChunk | DeadLetter]]:
        """Yields the records (or record chunks) of the file at `path` and its dead letters."""
        on_read = _FileBytes()
        indices: list[int] = []
        offsets: list[int] = []
        payloads: list[bytes] = []
        for item in iter_tfrecord_file(path, open_fn=self._open_fn, on_read=on_read):
            if isinstance(item, DeadLetter):
                self._dead_letters.inc()
                progress.report(read_dead_letters=1)
                yield DEAD_LETTER_TAG, item
            elif self._chunk_size is None:
                self._records_read.inc()
                progress.report(records_read=1)
                yield _RECORDS_TAG, item
            else:
                indices.append(item.index)
                offsets.append(item.offset)
                payloads.append(item.data)
                if len(payloads) >= self._chunk_size:
                    self._records_read.inc(len(payloads))
                    progress.report(records_read=len(payloads))
                    yield _RECORDS_TAG, (path, indices, offsets, payloads)
                    indices, offsets, payloads = [], [], []
        if payloads:
            self._records_read.inc(len(payloads))
            progress.report(records_read=len(payloads))
            yield _RECORDS_TAG, (path, indices, offsets, payloads)
        on_read.done()


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
        items = paths | "ReadFile" >> beam.ParDo(read)
        return ReadResult(
            records=items | "SelectRecords" >> beam.FlatMap(_select, _RECORDS_TAG),
            dead_letters=items | "SelectDeadLetters" >> beam.FlatMap(_select, DEAD_LETTER_TAG),
        )


class Block(NamedTuple):
    """A block of one file: up to `block_rows` records in model-batch chunks (`ReadBlocks`).

    A block is the unit the job attributes and writes (one Parquet row group); everything about
    it travels with it as data, so that counts never depend on a runner's metrics.

    Attributes:
      file_index: The file's position in the job's file list.
      block_index: The block's position in its file (0, 1, ...).
      path: The file.
      chunks: `RecordChunk`s of up to `chunk_size` consecutive intact records each.
      dead_letters: The damaged records and spans found while reading this block (stage read).
      last: Whether this is the file's last block (every file yields at least one block, even an
        empty file, so that files read are counted as data too).
    """

    file_index: int
    block_index: int
    path: str
    chunks: list[RecordChunk]
    dead_letters: list[DeadLetter]
    last: bool

    @property
    def records(self) -> int:
        """Intact records in the block."""
        return sum(chunk_length(c) for c in self.chunks)


class _ReadBlocksDoFn(beam.DoFn):
    """(file index, path) -> the file's `Block`s, one output (every runner supports it)."""

    def __init__(self, chunk_size: int, block_rows: int, block_bytes: int) -> None:
        super().__init__()
        self._chunk_size = chunk_size
        self._block_rows = block_rows
        self._block_bytes = block_bytes
        self._records_read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, RECORDS_READ)
        self._dead_letters = beam.metrics.Metrics.counter(METRICS_NAMESPACE, READ_DEAD_LETTERS)

    def process(self, indexed_path: tuple[int, str]) -> Iterator[Block]:
        """Yields the blocks of one file, in file order."""
        file_index, path = indexed_path
        on_read = _FileBytes()
        block = 0
        chunks: list[RecordChunk] = []
        dead: list[DeadLetter] = []
        indices: list[int] = []
        offsets: list[int] = []
        payloads: list[bytes] = []
        rows = size = 0
        items = iter_tfrecord_file(path, open_fn=open_with_filesystems, on_read=on_read)
        for item in stages.timed_iter("read", items):
            if isinstance(item, DeadLetter):
                self._dead_letters.inc()
                progress.report(read_dead_letters=1)
                dead.append(item)
                continue
            indices.append(item.index)
            offsets.append(item.offset)
            payloads.append(item.data)
            rows += 1
            size += len(item.data)
            if len(payloads) >= self._chunk_size:
                chunks.append((path, indices, offsets, payloads))
                indices, offsets, payloads = [], [], []
            if rows >= self._block_rows or size >= self._block_bytes:
                if payloads:
                    chunks.append((path, indices, offsets, payloads))
                    indices, offsets, payloads = [], [], []
                self._records_read.inc(rows)
                progress.report(records_read=rows)
                yield Block(file_index, block, path, chunks, dead, last=False)
                block += 1
                chunks, dead, rows, size = [], [], 0, 0
        if payloads:
            chunks.append((path, indices, offsets, payloads))
        self._records_read.inc(rows)
        progress.report(records_read=rows)
        on_read.done()
        yield Block(file_index, block, path, chunks, dead, last=True)


class ReadBlocks(beam.PTransform[beam.pvalue.PBegin, beam.PCollection[Block]]):
    """Reads a list of TFRecord files as `Block`s: the job's source, on every runner.

    One output (no tagged outputs) and nothing emitted from `finish_bundle`: the forms Beam's
    DaskRunner executes correctly. Files are spread over workers (`Reshuffle`); a file's blocks
    are read in order by one worker.

    Args:
      files: The files to read (`match_files`).
      chunk_size: Records per chunk (the model batch size).
      block_rows: Records per block, at most (the attributions' row group).
      block_bytes: Serialized bytes per block, at most: large records make smaller blocks.
    """

    def __init__(
        self, files: list[str], *, chunk_size: int, block_rows: int, block_bytes: int
    ) -> None:
        super().__init__()
        self._files = list(files)
        self._read = _ReadBlocksDoFn(chunk_size, block_rows, block_bytes)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[Block]:
        return (
            pbegin
            | "CreateFileList" >> beam.Create(list(enumerate(self._files)))
            | "ReshuffleFiles" >> beam.Reshuffle()
            | "ReadBlocks" >> beam.ParDo(self._read)
        )


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
