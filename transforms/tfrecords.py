"""Pure-Python TFRecord reading: every intact record out, every damaged byte accounted for.

A nightly attribution job reads thousands of TFRecord files, and some of them are damaged: a
flipped bit, a truncated upload, a block of garbage in the middle, a half-written gzip file.
`tf.data` stops at the first such error. This module instead reads the TFRecord framing itself
and turns every kind of damage into a `DeadLetter` (stage `STAGE_READ`) while still yielding
every intact record, including the records *after* the damage.

`iter_tfrecord_file` is a generator over one (optionally gzip-compressed) file. It decompresses
in a streaming fashion and keeps only a bounded sliding buffer in memory, so files of any size
can be read. It opens local files by default; pass `open_fn` for any other storage. An optional
`on_read` hook sees the raw bytes as they are read (progress, ETA, throughput).

No Apache Beam here (importing this module does not import it): the launcher, tools and tests
use the reader directly, and `transforms.records` wraps it as a Beam source that reads any Beam
filesystem (gs://...).

TFRecord framing, for reference (all integers little-endian)::

    uint64 length
    uint32 masked_crc32c(length bytes)
    byte   data[length]
    uint32 masked_crc32c(data)
"""

from __future__ import annotations

import contextlib
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO, NamedTuple

import google_crc32c
import numpy as np

from attribution.errors import one_line
from transforms.constants import STAGE_READ
from transforms.dead_letters import DeadLetter

__all__ = [
    "MAX_RAW_BYTES",
    "MAX_RECORD_LENGTH",
    "OpenFn",
    "ReadHook",
    "Record",
    "RecordChunk",
    "chunk_length",
    "chunk_records",
    "iter_tfrecord_file",
    "masked_crc32c",
]

# Length field + length CRC, and the trailing data CRC.
_HEADER_SIZE = 12
_FOOTER_SIZE = 4
_FRAME_OVERHEAD = _HEADER_SIZE + _FOOTER_SIZE

# A declared length above this is treated as a damaged header.
MAX_RECORD_LENGTH = 2 * 1024**3
# `DeadLetter.raw` is capped at this many bytes.
MAX_RAW_BYTES = 1024**2

# Compressed bytes read from the file per call, and the most uncompressed bytes produced per
# decompression step (bounds the memory a highly compressible chunk can expand to).
_READ_CHUNK_SIZE = 256 * 1024
_MAX_DECOMPRESSED_CHUNK = 1024**2
# Compressed bytes fed to the decompressor per step; on corrupt data the failing step is
# replayed byte by byte to recover its output, so this bounds that cost.
_GZIP_FEED_SIZE = 16 * 1024

# While resynchronising, scan at most this many bytes past the cursor before dropping the
# bytes already scanned from the buffer, and test this many candidate offsets per vectorised
# step (bounding the size of its temporary arrays).
_SCAN_WINDOW = 1024**2
_SCAN_BLOCK = 64 * 1024

# A header whose length CRC fails can still be a single damaged record (e.g. a flipped bit in
# the CRC field). We only trust its unverified length enough to look past it when the length
# is at most this, so a garbage length cannot make us buffer gigabytes.
_MAX_UNVERIFIED_LENGTH = 64 * 1024**2

_CRC_MASK_DELTA = 0xA282EAD8
_U64 = struct.Struct("<Q")
_HEADER = struct.Struct("<QI")  # length, masked CRC of the length
_U32 = struct.Struct("<I")

OpenFn = Callable[[str], BinaryIO]
"""Opens a path for raw binary reading (no decompression)."""
ReadHook = Callable[[int], None]
"""Called with the number of raw (for gzip: compressed) bytes of each block read from a file."""

# `zlib.Decompress` is not exposed under that name before Python 3.12.
_Decompressor = type(zlib.decompressobj())


class Record(NamedTuple):
    """One intact TFRecord.

    Attributes:
      file: The file the record was read from.
      index: Index of the record within its file (counting good and dead-lettered records).
      offset: Byte offset of the record's header in the uncompressed stream.
      data: The record payload (typically a serialized `tf.train.Example`).
    """

    file: str
    index: int
    offset: int
    data: bytes


RecordChunk = tuple[str, list[int], list[int], list[bytes]]
"""Consecutive `Record`s of one file, columnar: (file, indices, offsets, payloads).

Plain builtins on purpose: Beam's default coder encodes them natively, and it encodes every
element it samples for its size metrics; a list of `Record`s would be pickled record by record.
"""


def chunk_records(chunk: RecordChunk) -> list[Record]:
    """The `Record`s of a chunk."""
    file, indices, offsets, payloads = chunk
    return [Record(file, i, o, d) for i, o, d in zip(indices, offsets, payloads, strict=True)]


def chunk_length(chunk: RecordChunk) -> int:
    """The number of records in a chunk."""
    return len(chunk[3])


def masked_crc32c(data: bytes) -> int:
    """Returns the TFRecord "masked" CRC32C of `data`."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def _crc_tables() -> tuple[np.ndarray, int]:
    """Returns per-byte tables for the CRC32C of 8-byte lengths below 2**32.

    CRC32C is affine over GF(2): for equal-length inputs, crc(a ^ b) == crc(a) ^ crc(b) ^
    crc(0). So the CRC of `b0 b1 b2 b3 0 0 0 0` is `crc(zeros) ^ T[0][b0] ^ ... ^ T[3][b3]`
    with `T[k][b] = crc(b at position k, zeros elsewhere) ^ crc(zeros)`.
    """
    zero_crc = google_crc32c.value(bytes(8))
    tables = np.zeros((4, 256), dtype=np.uint32)
    for k in range(4):
        for b in range(256):
            message = bytearray(8)
            message[k] = b
            tables[k, b] = google_crc32c.value(bytes(message)) ^ zero_crc
    return tables, zero_crc


_LENGTH_CRC_TABLES, _ZERO_LENGTH_CRC = _crc_tables()


def _header_candidates(window: bytes) -> np.ndarray:
    """Returns the offsets in `window` where a 12-byte header with a valid length CRC starts.

    Vectorised, so resynchronising over garbage runs at C speed whatever the garbage: only the
    offsets returned (real headers, barring a 2**-32 coincidence) are examined in Python. Only
    lengths <= MAX_RECORD_LENGTH qualify, so the upper four length bytes must be zero.

    Args:
      window: Bytes to scan; offsets p with p + 12 <= len(window) are tested.

    Returns:
      Ascending offsets (int64 array).
    """
    found = []
    data = np.frombuffer(window, dtype=np.uint8)
    n_total = len(data) - _HEADER_SIZE + 1
    for begin in range(0, max(n_total, 0), _SCAN_BLOCK):
        n = min(_SCAN_BLOCK, n_total - begin)
        block = data[begin : begin + n + _HEADER_SIZE - 1]
        upper = block[4 : 4 + n] | block[5 : 5 + n] | block[6 : 6 + n] | block[7 : 7 + n]
        offsets = np.flatnonzero(upper == 0)
        if offsets.size == 0:
            continue
        low = [block[offsets + k] for k in range(4)]
        crc = np.uint32(_ZERO_LENGTH_CRC)
        for k in range(4):
            crc = crc ^ _LENGTH_CRC_TABLES[k][low[k]]
        masked = ((crc >> np.uint32(15)) | (crc << np.uint32(17))) + np.uint32(_CRC_MASK_DELTA)
        stored = np.zeros(offsets.size, dtype=np.uint32)
        length = np.zeros(offsets.size, dtype=np.uint32)
        for k in range(4):
            shift = np.uint32(8 * k)
            stored |= block[offsets + 8 + k].astype(np.uint32) << shift
            length |= low[k].astype(np.uint32) << shift
        valid = (masked == stored) & (length <= MAX_RECORD_LENGTH)
        found.append(offsets[valid] + begin)
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


class _StreamError(Exception):
    """The byte stream ended abnormally (corrupt/truncated gzip data or an I/O error)."""


class _PlainChunks:
    """Reads an uncompressed file in chunks.

    `on_read`, if given, is called with the size of each non-empty block read from the file.
    """

    def __init__(self, fileobj: BinaryIO, on_read: ReadHook | None = None) -> None:
        self._file = fileobj
        self._on_read = on_read

    def read_chunk(self) -> bytes:
        """Returns the next chunk, or b"" at end of file.

        Raises:
          _StreamError: If reading fails.
        """
        try:
            chunk = self._file.read(_READ_CHUNK_SIZE)
        except Exception as e:  # Any filesystem's read error (OSError, HTTP errors...).
            raise _StreamError(f"read error: {one_line(e)}") from e
        if chunk and self._on_read is not None:
            self._on_read(len(chunk))
        return chunk


class _GzipChunks:
    """Decompresses a (possibly multi-member) gzip file in chunks.

    Compressed input is fed in small pieces from a snapshot of the decompressor, so that when
    the data turns out to be corrupt, everything that decodes before the bad byte can still be
    returned (Python's zlib discards a failing call's partial output).

    `on_read`, if given, is called with the size of each non-empty (compressed) block read from
    the file.
    """

    def __init__(self, fileobj: BinaryIO, on_read: ReadHook | None = None) -> None:
        self._file = fileobj
        self._on_read = on_read
        self._decompressor = self._new_decompressor()
        self._member_started = False
        self._chunk = b""  # Last block read from the file.
        self._chunk_pos = 0  # Next byte of `_chunk` to feed.
        self._carry = b""  # Input the decompressor handed back, fed before `_chunk`.
        self._input_done = False
        self._offset = 0  # Compressed offset of the next byte to feed.
        self._error: _StreamError | None = None

    @staticmethod
    def _new_decompressor() -> _Decompressor:
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)

    def _next_input(self) -> bytes:
        """Returns the next compressed bytes to feed, or b"" once the file is exhausted."""
        if self._carry:
            data, self._carry = self._carry, b""
            return data
        if self._chunk_pos >= len(self._chunk):
            if self._input_done:
                return b""
            try:
                self._chunk = self._file.read(_READ_CHUNK_SIZE)
            except Exception as e:  # Any filesystem's read error (OSError, HTTP errors...).
                raise _StreamError(f"read error: {one_line(e)}") from e
            self._chunk_pos = 0
            if not self._chunk:
                self._input_done = True
                return b""
            if self._on_read is not None:
                self._on_read(len(self._chunk))
        data = self._chunk[self._chunk_pos : self._chunk_pos + _GZIP_FEED_SIZE]
        self._chunk_pos += len(data)
        return data

    def read_chunk(self) -> bytes:
        """Returns the next chunk of uncompressed bytes, or b"" at the end of the stream.

        Raises:
          _StreamError: If the gzip data is corrupt or ends before a member's end marker (after
            the bytes decoded before the damage have been returned).
        """
        if self._error is not None:
            raise self._error
        while True:
            data = self._next_input()
            if not data and not self._member_started:
                return b""  # Clean end: after a complete member, or an empty file.
            self._member_started = True
            snapshot = self._decompressor.copy()
            try:
                out = self._decompressor.decompress(data, _MAX_DECOMPRESSED_CHUNK)
            except zlib.error as e:
                out = self._salvage(snapshot, data, e)
                if out:
                    return out
                raise self._error from e
            decompressor = self._decompressor
            if decompressor.eof:
                # End of one gzip member; anything after it is the next member.
                leftover = decompressor.unused_data
                self._decompressor = self._new_decompressor()
                self._member_started = False
            else:
                leftover = decompressor.unconsumed_tail
            self._offset += len(data) - len(leftover)
            self._carry = leftover
            if out:
                return out
            if not data and self._member_started:
                self._error = _StreamError(
                    f"truncated gzip stream: the file ends at compressed offset {self._offset} "
                    "before the gzip end-of-stream marker"
                )
                raise self._error

    def _salvage(self, snapshot: _Decompressor, data: bytes, error: zlib.error) -> bytes:
        """Re-feeds `data` byte by byte to `snapshot`; returns the output before the error.

        Also records the error (with the exact compressed offset) to raise on the next call.
        """
        out = bytearray()
        for i in range(len(data)):
            try:
                out += snapshot.decompress(data[i : i + 1])
            except zlib.error as e:
                error, offset = e, self._offset + i
                break
            if snapshot.eof:
                offset = self._offset + i + 1
                break
        else:
            offset = self._offset + len(data)
        message = " ".join(str(error).split())
        self._error = _StreamError(f"corrupt gzip data at compressed offset {offset}: {message}")
        return bytes(out)


class _SlidingBuffer:
    """A bounded look-ahead buffer over a decompressed byte stream.

    Positions passed to the methods are relative to the read cursor. Bytes before the cursor
    are dropped, so memory is bounded by the largest look-ahead requested (one record, or one
    scan window while resynchronising), not by the file size.

    Attributes:
      pos: Absolute offset of the cursor in the uncompressed stream.
      eof: Whether the stream is exhausted (normally or because of `error`).
      error: A one-line description of an abnormal end of the stream, else None.
    """

    def __init__(self, source: _PlainChunks | _GzipChunks) -> None:
        self._source = source
        self._buf = bytearray()
        self._start = 0
        self.pos = 0
        self.eof = False
        self.error: str | None = None

    def available(self) -> int:
        """Returns the number of buffered bytes at or after the cursor."""
        return len(self._buf) - self._start

    def fill(self, n: int) -> int:
        """Buffers at least `n` bytes past the cursor if the stream has them.

        Returns:
          The number of bytes available; fewer than `n` only at the end of the stream.
        """
        while self.available() < n and not self.eof:
            try:
                chunk = self._source.read_chunk()
            except _StreamError as e:
                self.error = str(e)
                self.eof = True
                break
            if not chunk:
                self.eof = True
                break
            if self._start:
                del self._buf[: self._start]
                self._start = 0
            self._buf += chunk
        return self.available()

    def peek(self, begin: int, end: int) -> bytes:
        """Returns buffered bytes [begin, end) relative to the cursor."""
        # Through a view: one copy instead of two. The view is released before returning, so
        # the bytearray can still be resized afterwards.
        with memoryview(self._buf) as view:
            return view[self._start + begin : self._start + end].tobytes()

    def buffered(self) -> tuple[bytearray, int, int]:
        """(buffer, cursor index, end index): the buffered bytes, to scan without copying.

        Valid until the next `fill` or `skip`; the caller must not modify the buffer.
        """
        return self._buf, self._start, len(self._buf)

    def skip(self, n: int) -> None:
        """Advances the cursor by `n` buffered bytes."""
        self._start += n
        self.pos += n
        if self._start == len(self._buf):
            self._buf.clear()
            self._start = 0


class _TFRecordStreamReader:
    """Parses TFRecord framing from a `_SlidingBuffer`, dead-lettering damage.

    Iterating yields `Record`s and `DeadLetter`s in stream order and never raises for bad data.
    """

    def __init__(self, path: str, buffer: _SlidingBuffer) -> None:
        self._path = path
        self._buf = buffer
        self._index = 0
        self._done = False

    def _dead_letter(self, record_index: int, offset: int, reason: str, raw: bytes) -> DeadLetter:
        return DeadLetter(
            file=self._path,
            record_index=record_index,
            offset=offset,
            stage=STAGE_READ,
            reason=reason,
            raw=bytes(raw[:MAX_RAW_BYTES]),
        )

    def _next_index(self) -> int:
        index = self._index
        self._index += 1
        return index

    def _header_at(self, rel: int) -> tuple[int, bool]:
        """Returns (declared length, whether its CRC is valid) for the buffered header at `rel`."""
        header = self._buf.peek(rel, rel + _HEADER_SIZE)
        (length,) = _U64.unpack_from(header)
        (length_crc,) = _U32.unpack_from(header, 8)
        return length, masked_crc32c(header[:8]) == length_crc

    def _data_crc_ok(self, rel: int, length: int) -> bool:
        """Returns whether the fully buffered record at `rel` has a valid data CRC."""
        data_begin = rel + _HEADER_SIZE
        data_end = data_begin + length
        (data_crc,) = _U32.unpack(self._buf.peek(data_end, data_end + _FOOTER_SIZE))
        return masked_crc32c(self._buf.peek(data_begin, data_end)) == data_crc

    def _valid_record_at(self, rel: int) -> bool:
        """Returns whether a complete record with valid CRCs starts at `rel`."""
        if self._buf.fill(rel + _HEADER_SIZE) < rel + _HEADER_SIZE:
            return False
        length, length_ok = self._header_at(rel)
        if not length_ok or length > MAX_RECORD_LENGTH:
            return False
        end = rel + _FRAME_OVERHEAD + length
        return self._buf.fill(end) >= end and self._data_crc_ok(rel, length)

    def _intact_buffered(self) -> list[Record]:
        """Every complete record with valid CRCs at the head of the buffer, in one tight loop.

        The common case, without the per-record bookkeeping of the careful path: it stops at
        the first record that is incomplete or fails a check and leaves that one (and any
        damage) to `__iter__`'s careful path, so the results are the same.
        """
        data, start, end = self._buf.buffered()
        base = self._buf.pos - start  # absolute offset = base + index in `data`
        path, index, pos = self._path, self._index, start
        records = []
        with memoryview(data) as view:
            while end - pos >= _HEADER_SIZE:
                length, length_crc = _HEADER.unpack_from(data, pos)
                data_begin = pos + _HEADER_SIZE
                data_end = data_begin + length
                if (
                    length > MAX_RECORD_LENGTH
                    or data_end + _FOOTER_SIZE > end
                    or masked_crc32c(view[pos : pos + 8].tobytes()) != length_crc
                ):
                    break
                payload = view[data_begin:data_end].tobytes()
                if masked_crc32c(payload) != _U32.unpack_from(data, data_end)[0]:
                    break
                records.append(Record(path, index, base + pos, payload))
                index += 1
                pos = data_end + _FOOTER_SIZE
        self._index = index
        self._buf.skip(pos - start)
        return records

    def __iter__(self) -> Iterator[Record | DeadLetter]:
        buf = self._buf
        while not self._done:
            yield from self._intact_buffered()
            have = buf.fill(_HEADER_SIZE)
            if have < _HEADER_SIZE:
                if buf.error is not None:
                    yield self._stream_error()
                elif have:
                    yield self._truncated_header(have)
                return
            length, length_ok = self._header_at(0)
            if length_ok and length <= MAX_RECORD_LENGTH:
                yield self._framed_record(length)
            elif not length_ok and self._plausible_length(length):
                yield self._length_crc_mismatch(length)
            else:
                yield self._resync()

    def _stream_error(self) -> DeadLetter:
        """Dead-letters an abnormal end of stream, with whatever bytes were left over."""
        buf = self._buf
        leftover = buf.available()
        offset = buf.pos
        raw = buf.peek(0, min(leftover, MAX_RAW_BYTES))
        buf.skip(leftover)
        reason = f"{buf.error}; decompressed stream ended at offset {buf.pos}"
        if leftover:
            reason += f", discarding {leftover} bytes of incomplete record data"
        self._done = True
        return self._dead_letter(-1, offset, reason, raw)

    def _truncated_header(self, have: int) -> DeadLetter:
        """Dead-letters the `have` (< header size) bytes left at the end of the file."""
        return self._truncated_at_end(
            have,
            f"truncated record header: only {have} of {_HEADER_SIZE} header bytes before end "
            "of file",
        )

    def _truncated_at_end(self, have: int, reason: str) -> DeadLetter:
        """Dead-letters the `have` bytes left at the cursor (an incomplete last record); stops."""
        buf = self._buf
        offset = buf.pos
        raw = buf.peek(0, min(have, MAX_RAW_BYTES))
        buf.skip(have)
        self._done = True
        return self._dead_letter(self._next_index(), offset, reason, raw)

    def _framed_record(self, length: int) -> Record | DeadLetter:
        """Reads the record at the cursor, whose header (declaring `length`) is valid."""
        buf = self._buf
        offset = buf.pos
        size = _FRAME_OVERHEAD + length
        have = buf.fill(size)
        if have < size:
            if buf.error is not None:
                return self._stream_error()
            return self._truncated_at_end(
                have,
                f"truncated record: header declares {length} data bytes but the file ends "
                f"{have} bytes after the record start (needs {size})",
            )
        data = buf.peek(_HEADER_SIZE, _HEADER_SIZE + length)
        (data_crc,) = _U32.unpack(buf.peek(_HEADER_SIZE + length, size))
        crc_ok = masked_crc32c(data) == data_crc
        buf.skip(size)
        index = self._next_index()
        if crc_ok:
            return Record(self._path, index, offset, data)
        return self._dead_letter(
            index, offset, f"data CRC mismatch in record of {length} bytes", data
        )

    def _plausible_length(self, length: int) -> bool:
        """Returns whether an unverified `length` (its CRC failed) still frames a record.

        It does if the record it frames ends exactly at the end of the stream or is followed by
        a header whose length CRC is valid: then only the length CRC was damaged, and the
        record can be dead-lettered on its own instead of as part of a skipped span.
        """
        if length > _MAX_UNVERIFIED_LENGTH:
            return False
        end = _FRAME_OVERHEAD + length
        have = self._buf.fill(end + _HEADER_SIZE)
        if have == end:
            return self._buf.eof and self._buf.error is None
        if have < end + _HEADER_SIZE:
            return False
        next_length, next_ok = self._header_at(end)
        return next_ok and next_length <= MAX_RECORD_LENGTH

    def _length_crc_mismatch(self, length: int) -> DeadLetter:
        """Dead-letters the record at the cursor, whose length CRC failed but length fits."""
        buf = self._buf
        offset = buf.pos
        data_state = "valid" if self._data_crc_ok(0, length) else "also invalid"
        data = buf.peek(_HEADER_SIZE, _HEADER_SIZE + length)
        buf.skip(_FRAME_OVERHEAD + length)
        return self._dead_letter(
            self._next_index(),
            offset,
            f"length CRC mismatch in record header (declared length {length}, data CRC "
            f"{data_state})",
            data,
        )

    def _resync(self) -> DeadLetter:
        """Skips damaged bytes at the cursor up to the next valid record (or end of stream).

        Scans forward byte by byte for the next offset where a complete record with a valid
        length CRC and a valid data CRC starts. Length CRCs are checked vectorised (see
        `_header_candidates`), so the cost is linear at C speed whatever the garbage looks
        like; data CRCs are only computed where a length CRC validates. Memory stays bounded
        because scanned bytes are dropped every `_SCAN_WINDOW` bytes.

        Returns:
          One dead letter (record index -1) covering the whole skipped span.
        """
        buf = self._buf
        start = buf.pos
        raw = bytearray()
        skipped = 0

        def drop(n: int) -> None:
            nonlocal skipped
            if len(raw) < MAX_RAW_BYTES:
                raw.extend(buf.peek(0, min(n, MAX_RAW_BYTES - len(raw))))
            buf.skip(n)
            skipped += n

        rel = 1  # The header at the cursor is known to be bad.
        while True:
            buf.fill(rel + _SCAN_WINDOW)
            found, rel = self._scan(rel)
            if found is not None:
                drop(found)
                where = f"resynchronised at offset {buf.pos}"
                break
            if buf.eof:
                drop(buf.available())
                where = f"no valid record before the end of the stream at offset {buf.pos}"
                if buf.error is not None:
                    where += f" ({buf.error})"
                    self._done = True
                break
            drop(rel)
            rel = 0
        return self._dead_letter(
            -1,
            start,
            f"corrupt data: skipped {skipped} bytes after an invalid record header; {where}",
            raw,
        )

    def _scan(self, rel: int) -> tuple[int | None, int]:
        """Looks for the first valid record at or after `rel` among the buffered bytes.

        Returns:
          (offset of the record relative to the cursor, or None if there is none yet; the
          first offset not yet ruled out).
        """
        have = self._buf.available()
        if rel + _HEADER_SIZE > have:
            return None, rel
        for candidate in _header_candidates(self._buf.peek(rel, have)):
            offset = rel + int(candidate)
            if self._valid_record_at(offset):
                return offset, offset
        return None, have - _HEADER_SIZE + 1


def _open_local(path: str) -> BinaryIO:
    """Opens the local file `path` for binary reading."""
    return open(path, "rb")


def iter_tfrecord_file(
    path: str, *, open_fn: OpenFn | None = None, on_read: ReadHook | None = None
) -> Iterator[Record | DeadLetter]:
    """Yields every record of a TFRecord file, and a `DeadLetter` for every damaged part.

    Files whose name ends in ".gz" are read as (possibly multi-member) gzip. Reading never
    raises for bad data: damage becomes dead letters with stage `STAGE_READ` and offsets in
    the uncompressed stream:

    * data CRC mismatch, or a length CRC mismatch whose length still frames the record:
      one dead letter for that record (raw = its payload), then reading goes on;
    * an invalid header (garbage): one dead letter (record index -1) for the whole span up to
      the next offset where a record with valid CRCs starts, then reading goes on;
    * a truncated header or record at the end of the file: one dead letter;
    * corrupt or truncated gzip data, or a read error: every record before it, then one dead
      letter naming the error;
    * a file that cannot be opened: one dead letter (record index -1, offset 0).

    Record indices count good and dead-lettered records; a skipped span does not advance the
    index (how many records it held is unknown). Memory use is bounded by the largest record
    plus a few MiB, whatever the file size.

    Args:
      path: File path; a local path unless `open_fn` can open others.
      open_fn: Opens a path for binary reading (raw bytes, no decompression). Defaults to
        `open(path, "rb")` (local files); `transforms.records.read_tfrecord_file` reads any
        Beam filesystem (e.g. gs://...).
      on_read: Called with the number of raw bytes (compressed bytes for a gzip file) each time
        a block is read from the file, as reading proceeds: the arguments of one full read sum
        to the file's size. For progress reporting; one call per block of up to 256 KiB.

    Yields:
      `Record` for each intact record and `DeadLetter` for each damaged record or span, in
      file order.
    """
    opener = open_fn or _open_local
    try:
        fileobj = opener(path)
    except Exception as e:  # noqa: BLE001 - any filesystem's open error becomes a dead letter.
        yield DeadLetter(
            file=path,
            record_index=-1,
            offset=0,
            stage=STAGE_READ,
            reason=f"cannot open file: {one_line(e)}",
            raw=b"",
        )
        return
    try:
        chunks = _GzipChunks if path.lower().endswith(".gz") else _PlainChunks
        source = chunks(fileobj, on_read)
        yield from _TFRecordStreamReader(path, _SlidingBuffer(source))
    finally:
        # A failing close of a file opened for reading loses nothing.
        with contextlib.suppress(Exception):
            fileobj.close()
