"""Tests for transforms.tfrecords (the TFRecord reader) and transforms.records (its Beam source)."""

from __future__ import annotations

import gzip as gzip_module
import io
import os
import random
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that, equal_to
from helpers import counter_totals, example_bytes, local_pipeline, record_offsets, write_records

from transforms.constants import BYTES_READ, METRICS_NAMESPACE
from transforms.dead_letters import STAGE_READ, DeadLetter
from transforms.records import (
    ReadTFRecordFiles,
    ReadTFRecords,
    expand_file_pattern,
    read_tfrecord_file,
)
from transforms.tfrecords import (
    MAX_RAW_BYTES,
    Record,
    _header_candidates,
    chunk_length,
    chunk_records,
    iter_tfrecord_file,
    masked_crc32c,
)


def _examples(n: int, seed: int = 0) -> list[bytes]:
    """Returns `n` serialized tf.train.Examples of varying sizes."""
    rng = random.Random(seed)
    return [
        example_bytes(id=[i], x=[rng.random() for _ in range(rng.randint(1, 40))]) for i in range(n)
    ]


def _random_payloads(n: int, size: int, seed: int = 0) -> list[bytes]:
    """Returns `n` incompressible payloads of `size` bytes."""
    rng = random.Random(seed)
    return [rng.randbytes(size) for _ in range(n)]


def _read(path: Path, **kwargs) -> tuple[list[Record], list[DeadLetter], list]:
    items = list(iter_tfrecord_file(str(path), **kwargs))
    records = [item for item in items if isinstance(item, Record)]
    letters = [item for item in items if isinstance(item, DeadLetter)]
    assert len(records) + len(letters) == len(items)
    return records, letters, items


def _flip(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1 :]


class _TrickleFile(io.BytesIO):
    """A file whose reads return at most a few bytes, to stress buffer boundaries."""

    def read(self, size: int | None = -1) -> bytes:
        return super().read(7 if size is None or size < 0 else min(size, 7))


def _trickle_open(path: str) -> io.BytesIO:
    return _TrickleFile(Path(path).read_bytes())


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_good_file_round_trip(tmp_path, gzip):
    payloads = _examples(10)
    path = write_records(
        tmp_path / ("good.tfrecord.gz" if gzip else "good.tfrecord"), payloads, gzip=gzip
    )

    records, letters, _ = _read(path)

    assert letters == []
    assert records == [
        Record(str(path), i, offset, payload)
        for i, (offset, payload) in enumerate(zip(record_offsets(payloads), payloads, strict=True))
    ]
    assert tf.train.Example.FromString(records[7].data).features.feature["id"].int64_list.value[
        0
    ] == (7)


def test_reads_in_tiny_pieces_like_whole_reads(tmp_path):
    payloads = _examples(10)
    plain = write_records(tmp_path / "a.tfrecord", payloads)
    gz = write_records(tmp_path / "a.tfrecord.gz", payloads, gzip=True)
    data = plain.read_bytes()
    cut = record_offsets(payloads)[5]
    garbled = tmp_path / "garbled.tfrecord"
    garbled.write_bytes(data[:cut] + random.Random(1).randbytes(999) + data[cut:])

    for path in (plain, gz, garbled):
        assert _read(path, open_fn=_trickle_open)[2] == _read(path)[2]
    records, letters, _ = _read(garbled, open_fn=_trickle_open)
    assert [r.data for r in records] == payloads
    assert [(d.offset, d.raw) for d in letters] == [(cut, random.Random(1).randbytes(999))]


def test_data_crc_damage_dead_letters_one_record(tmp_path):
    payloads = _examples(10)
    offsets = record_offsets(payloads)
    data = write_records(tmp_path / "x.tfrecord", payloads).read_bytes()
    path = tmp_path / "damaged.tfrecord"
    path.write_bytes(_flip(data, offsets[3] + 12 + len(payloads[3]) // 2))

    records, letters, items = _read(path)

    assert [(r.index, r.offset, r.data) for r in records] == [
        (i, offsets[i], payloads[i]) for i in range(10) if i != 3
    ]
    assert len(letters) == 1
    letter = letters[0]
    assert (letter.file, letter.record_index, letter.offset, letter.stage) == (
        str(path),
        3,
        offsets[3],
        STAGE_READ,
    )
    assert "data CRC" in letter.reason
    assert letter.raw == _flip(payloads[3], len(payloads[3]) // 2)
    assert items[3] == letter


def test_length_crc_damage_dead_letters_one_record(tmp_path):
    payloads = _examples(10)
    offsets = record_offsets(payloads)
    data = write_records(tmp_path / "x.tfrecord", payloads).read_bytes()
    path = tmp_path / "damaged.tfrecord"
    path.write_bytes(_flip(data, offsets[3] + 9))  # Inside the length CRC.

    records, letters, _ = _read(path)

    assert [(r.index, r.offset, r.data) for r in records] == [
        (i, offsets[i], payloads[i]) for i in range(10) if i != 3
    ]
    assert [(d.record_index, d.offset, d.raw) for d in letters] == [(3, offsets[3], payloads[3])]
    assert "length CRC" in letters[0].reason


def test_length_crc_damage_on_last_record(tmp_path):
    payloads = _examples(4)
    offsets = record_offsets(payloads)
    data = write_records(tmp_path / "x.tfrecord", payloads).read_bytes()
    path = tmp_path / "damaged.tfrecord"
    path.write_bytes(_flip(data, offsets[3] + 8))

    records, letters, _ = _read(path)

    assert [r.data for r in records] == payloads[:3]
    assert [(d.record_index, d.offset) for d in letters] == [(3, offsets[3])]
    assert "length CRC" in letters[0].reason


def test_damaged_length_field_resyncs_at_next_record(tmp_path):
    payloads = _examples(10)
    offsets = record_offsets(payloads)
    data = write_records(tmp_path / "x.tfrecord", payloads).read_bytes()
    path = tmp_path / "damaged.tfrecord"
    path.write_bytes(_flip(data, offsets[3]))  # Low byte of record 3's length.

    records, letters, _ = _read(path)

    assert [r.data for r in records] == payloads[:3] + payloads[4:]
    assert [r.offset for r in records] == offsets[:3] + offsets[4:]
    # A skipped span does not advance the record index.
    assert [r.index for r in records] == list(range(9))
    assert len(letters) == 1
    span = letters[0]
    assert (span.record_index, span.offset) == (-1, offsets[3])
    assert f"skipped {offsets[4] - offsets[3]} bytes" in span.reason
    assert span.raw == _flip(data, offsets[3])[offsets[3] : offsets[4]]


def test_vectorised_header_scan_matches_scalar_crc():
    rng = random.Random(11)
    pieces = []
    for i in range(500):
        length = struct.pack("<Q", rng.randrange(2**31 + 1) if i % 2 else rng.randrange(300))
        pieces.append(length + struct.pack("<I", masked_crc32c(length)))
        pieces.append(rng.randbytes(rng.randrange(40)))
    # Lengths over 2 GiB with valid CRCs must not qualify.
    too_long = struct.pack("<Q", 2**31 + 1)
    pieces.append(too_long + struct.pack("<I", masked_crc32c(too_long)))
    window = b"".join(pieces) + bytes(100)

    def scalar(p: int) -> bool:
        (length,) = struct.unpack_from("<Q", window, p)
        (crc,) = struct.unpack_from("<I", window, p + 8)
        return length <= 2**31 and masked_crc32c(window[p : p + 8]) == crc

    expected = [p for p in range(len(window) - 11) if scalar(p)]
    assert len(expected) >= 500
    assert _header_candidates(window).tolist() == expected
    assert _header_candidates(b"short").tolist() == []


def _fake_header_garbage() -> bytes:
    """A header with a valid length CRC whose data CRC is wrong, plus filler."""
    length = struct.pack("<Q", 20)
    header = length + struct.pack("<I", masked_crc32c(length))
    return b"\x01\x02\x03" + header + bytes(20) + b"\xde\xad\xbe\xef" + b"junk"


GARBAGE = {
    "random": random.Random(7).randbytes(5000),
    "zeros": bytes(3000),
    "int64s": b"".join(struct.pack("<q", i) for i in range(-300, 300)),
    "fake_header": _fake_header_garbage(),
    "one_byte": b"\x07",
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_garbage_in_middle_resyncs(tmp_path, kind, gzip):
    garbage = GARBAGE[kind]
    payloads = _examples(10)
    offsets = record_offsets(payloads)
    data = write_records(tmp_path / "x.tfrecord", payloads).read_bytes()
    garbled = data[: offsets[5]] + garbage + data[offsets[5] :]
    path = tmp_path / ("garbled.tfrecord.gz" if gzip else "garbled.tfrecord")
    path.write_bytes(gzip_module.compress(garbled) if gzip else garbled)

    records, letters, items = _read(path)

    assert [r.data for r in records] == payloads
    assert [r.index for r in records] == list(range(10))
    assert [r.offset for r in records] == offsets[:5] + [o + len(garbage) for o in offsets[5:]]
    assert len(letters) == 1
    span = letters[0]
    assert (span.record_index, span.offset, span.stage) == (-1, offsets[5], STAGE_READ)
    assert f"skipped {len(garbage)} bytes" in span.reason
    assert span.raw == garbage
    assert items[5] == span


@pytest.mark.parametrize("where", ["start", "end"])
def test_garbage_at_start_or_end(tmp_path, where):
    garbage = random.Random(3).randbytes(777)
    payloads = _examples(5)
    data = write_records(tmp_path / "x.tfrecord", payloads).read_bytes()
    path = tmp_path / "garbled.tfrecord"
    path.write_bytes(garbage + data if where == "start" else data + garbage)

    records, letters, _ = _read(path)

    assert [r.data for r in records] == payloads
    expected_offset = 0 if where == "start" else len(data)
    assert [(d.record_index, d.offset, d.raw) for d in letters] == [(-1, expected_offset, garbage)]
    assert "skipped 777 bytes" in letters[0].reason


def test_truncated_last_record(tmp_path):
    payloads = _examples(10)
    offsets = record_offsets(payloads)
    data = write_records(tmp_path / "x.tfrecord", payloads).read_bytes()
    path = tmp_path / "truncated.tfrecord"
    path.write_bytes(data[: offsets[9] + 12 + 5])

    records, letters, _ = _read(path)

    assert [r.data for r in records] == payloads[:9]
    assert [(d.record_index, d.offset, d.raw) for d in letters] == [
        (9, offsets[9], data[offsets[9] : offsets[9] + 17])
    ]
    assert "truncated record" in letters[0].reason


def test_truncated_header(tmp_path):
    payloads = _examples(10)
    offsets = record_offsets(payloads)
    data = write_records(tmp_path / "x.tfrecord", payloads).read_bytes()
    path = tmp_path / "truncated.tfrecord"
    path.write_bytes(data[: offsets[9] + 5])

    records, letters, _ = _read(path)

    assert [r.data for r in records] == payloads[:9]
    assert [(d.record_index, d.offset) for d in letters] == [(9, offsets[9])]
    assert "truncated record header" in letters[0].reason


def test_empty_files_yield_nothing(tmp_path):
    empty = tmp_path / "empty.tfrecord"
    empty.write_bytes(b"")
    empty_gz = tmp_path / "empty.tfrecord.gz"
    empty_gz.write_bytes(b"")
    no_records_gz = write_records(tmp_path / "none.tfrecord.gz", [], gzip=True)
    assert no_records_gz.stat().st_size > 0

    for path in (empty, empty_gz, no_records_gz):
        assert list(iter_tfrecord_file(str(path))) == []


def test_truncated_gzip_yields_prefix_then_one_dead_letter(tmp_path):
    payloads = _random_payloads(200, 100)
    offsets = record_offsets(payloads)
    compressed = write_records(tmp_path / "x.tfrecord.gz", payloads, gzip=True).read_bytes()
    path = tmp_path / "truncated.tfrecord.gz"
    path.write_bytes(compressed[: len(compressed) // 2])

    records, letters, items = _read(path)

    assert 0 < len(records) < 200
    assert [(r.index, r.offset, r.data) for r in records] == [
        (i, offsets[i], payloads[i]) for i in range(len(records))
    ]
    assert len(letters) == 1 and items[-1] == letters[0]
    assert letters[0].offset == offsets[len(records)]
    assert "gzip" in letters[0].reason
    assert letters[0].stage == STAGE_READ


def test_corrupt_gzip_data_yields_prefix_then_gzip_dead_letter(tmp_path):
    payloads = _random_payloads(200, 100)
    compressed = write_records(tmp_path / "x.tfrecord.gz", payloads, gzip=True).read_bytes()
    middle = len(compressed) // 2
    path = tmp_path / "corrupt.tfrecord.gz"
    path.write_bytes(compressed[:middle] + bytes(64) + compressed[middle + 64 :])

    records, letters, items = _read(path)

    assert 0 < len(records) < 200
    # The records decoded before the damage come out, even from the failing decompression step.
    assert [r.index for r in records[:90]] == list(range(90))
    for record in records:  # Everything that comes out as intact is correct.
        assert record.data == payloads[record.index]
    assert isinstance(items[-1], DeadLetter)
    assert "gzip" in items[-1].reason
    assert sum("gzip" in d.reason for d in letters) == 1


def test_gzip_error_in_same_step_as_good_data_keeps_that_data(tmp_path):
    # A small file is decompressed in one step; a bad gzip CRC in its trailer makes zlib fail
    # that step, yet every record in it is intact and must come out.
    payloads = _examples(10)
    compressed = write_records(tmp_path / "x.tfrecord.gz", payloads, gzip=True).read_bytes()
    path = tmp_path / "bad_trailer.tfrecord.gz"
    path.write_bytes(_flip(compressed, len(compressed) - 8))  # First byte of the CRC32.

    records, letters, items = _read(path)

    assert [(r.index, r.offset, r.data) for r in records] == [
        (i, offset, payload)
        for i, (offset, payload) in enumerate(zip(record_offsets(payloads), payloads, strict=True))
    ]
    assert len(letters) == 1 and items[-1] == letters[0]
    letter = letters[0]
    end_of_records = sum(16 + len(payload) for payload in payloads)
    assert (letter.record_index, letter.offset, letter.raw) == (-1, end_of_records, b"")
    assert "gzip" in letter.reason and "incorrect data check" in letter.reason


def test_multi_member_gzip(tmp_path):
    first, second = _examples(4, seed=1), _examples(6, seed=2)
    part1 = write_records(tmp_path / "1.tfrecord.gz", first, gzip=True).read_bytes()
    part2 = write_records(tmp_path / "2.tfrecord.gz", second, gzip=True).read_bytes()
    path = tmp_path / "both.tfrecord.gz"
    path.write_bytes(part1 + part2)

    records, letters, _ = _read(path)

    assert letters == []
    payloads = first + second
    assert [(r.index, r.offset, r.data) for r in records] == [
        (i, offset, payload)
        for i, (offset, payload) in enumerate(zip(record_offsets(payloads), payloads, strict=True))
    ]


def test_missing_file_is_one_dead_letter(tmp_path):
    path = str(tmp_path / "missing.tfrecord")

    items = list(iter_tfrecord_file(path))

    assert len(items) == 1
    letter = items[0]
    assert isinstance(letter, DeadLetter)
    assert (letter.file, letter.record_index, letter.offset, letter.raw) == (path, -1, 0, b"")
    assert "No such file" in letter.reason and "\n" not in letter.reason


def test_open_fn_errors_and_read_errors_are_dead_letters(tmp_path):
    payloads = _examples(3)
    data = write_records(tmp_path / "x.tfrecord", payloads).read_bytes()

    def denied(path: str):
        raise PermissionError("access denied")

    class _FailingFile(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            if self.tell() >= 20:
                raise OSError("connection reset")
            return super().read(min(size, 20 - self.tell()))

    [letter] = list(iter_tfrecord_file("a.tfrecord", open_fn=denied))
    assert letter.record_index == -1 and "PermissionError: access denied" in letter.reason

    items = list(iter_tfrecord_file("b.tfrecord", open_fn=lambda path: _FailingFile(data)))
    assert [type(item) for item in items] == [DeadLetter]
    assert "connection reset" in items[0].reason and items[0].offset == 0


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_memory_stays_bounded(tmp_path, gzip):
    payloads = _random_payloads(6000, 4096, seed=5)
    offsets = record_offsets(payloads)
    data = write_records(tmp_path / "x.tfrecord", payloads).read_bytes()
    garbage = random.Random(9).randbytes(MAX_RAW_BYTES + MAX_RAW_BYTES // 2)
    garbled = data[: offsets[3000]] + garbage + data[offsets[3000] :]
    del data
    assert len(garbled) > 24 * 1024**2
    path = tmp_path / ("big.tfrecord.gz" if gzip else "big.tfrecord")
    path.write_bytes(gzip_module.compress(garbled, compresslevel=1) if gzip else garbled)
    del garbled

    n_records, letters = 0, []
    tracemalloc.start()
    try:
        for item in iter_tfrecord_file(str(path)):
            if isinstance(item, Record):
                n_records += 1
            else:
                letters.append(item)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert n_records == 6000
    assert [(d.record_index, d.offset) for d in letters] == [(-1, offsets[3000])]
    assert f"skipped {len(garbage)} bytes" in letters[0].reason
    assert letters[0].raw == garbage[:MAX_RAW_BYTES]
    assert peak < 8 * 1024**2


def test_expand_file_pattern(tmp_path):
    for name in ("b.tfrecord", "a.tfrecord", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    tfrecords = [str(tmp_path / "a.tfrecord"), str(tmp_path / "b.tfrecord")]

    assert expand_file_pattern(str(tmp_path / "*.tfrecord")) == tfrecords
    both = f"{tmp_path}/b.*, {tmp_path}/*.tfrecord"
    assert expand_file_pattern(both) == tfrecords
    assert expand_file_pattern([str(tmp_path / "c.txt"), str(tmp_path / "a.*")]) == [
        tfrecords[0],
        str(tmp_path / "c.txt"),
    ]


def test_expand_file_pattern_without_matches_raises(tmp_path):
    pattern = str(tmp_path / "nothing" / "*.tfrecord")
    with pytest.raises(ValueError, match="no files match input pattern"):
        expand_file_pattern(pattern)
    with pytest.raises(ValueError, match="no files match input pattern"):
        expand_file_pattern([])


def test_beam_read_tfrecords_splits_records_and_dead_letters(tmp_path):
    good_payloads = _examples(5, seed=1)
    good = write_records(tmp_path / "good.tfrecord.gz", good_payloads, gzip=True)
    bad_payloads = _examples(10, seed=2)
    bad_offsets = record_offsets(bad_payloads)
    data = write_records(tmp_path / "x.tfrecord", bad_payloads).read_bytes()
    bad = tmp_path / "bad.tfrecord"
    bad.write_bytes(_flip(data, bad_offsets[3] + 14))
    missing = tmp_path / "missing.tfrecord"
    files = [str(good), str(bad), str(missing)]

    expected_records = [(str(good), i, p) for i, p in enumerate(good_payloads)] + [
        (str(bad), i, p) for i, p in enumerate(bad_payloads) if i != 3
    ]
    expected_letters = [
        (str(bad), 3, bad_offsets[3], STAGE_READ),
        (str(missing), -1, 0, STAGE_READ),
    ]

    pipeline = local_pipeline()  # never Prism (a download)
    result = pipeline | "Read" >> ReadTFRecords(files)
    assert_that(
        result.records | "RecordKeys" >> beam.Map(lambda r: (r.file, r.index, r.data)),
        equal_to(expected_records),
        label="CheckRecords",
    )
    assert_that(
        result.dead_letters
        | "LetterKeys" >> beam.Map(lambda d: (d.file, d.record_index, d.offset, d.stage)),
        equal_to(expected_letters),
        label="CheckDeadLetters",
    )
    # The lower-level transform exposes the tagged outputs directly.
    outputs = pipeline | "Paths" >> beam.Create([str(bad)]) | "ReadDirect" >> ReadTFRecordFiles()
    assert_that(
        outputs.dead_letters | "DirectIndices" >> beam.Map(lambda d: d.record_index),
        equal_to([3]),
        label="CheckDirectDeadLetters",
    )
    assert_that(
        outputs.records | "DirectCount" >> beam.combiners.Count.Globally(),
        equal_to([9]),
        label="CheckDirectRecords",
    )
    run = pipeline.run()
    run.wait_until_finish()

    counters = counter_totals(run)
    assert counters == {"records_read": 14 + 9, "read_dead_letters": 2 + 1, "files_read": 4}


def test_chunked_read_holds_the_same_records_in_plain_builtins(tmp_path):
    # Chunks are (file, indices, offsets, payloads) of builtins, so Beam's default coder encodes
    # them natively; `chunk_records` gives back exactly the records an unchunked read yields.
    payloads = _examples(10, seed=3)
    offsets = record_offsets(payloads)
    data = write_records(tmp_path / "x.tfrecord", payloads).read_bytes()
    damaged = tmp_path / "damaged.tfrecord"
    damaged.write_bytes(_flip(data, offsets[4] + 14))  # record 4 dead-lettered, index kept
    clean = write_records(tmp_path / "clean.tfrecord.gz", _examples(7, seed=4), gzip=True)
    files = [str(damaged), str(clean)]
    expected = [tuple(r) for f in files for r in iter_tfrecord_file(f) if isinstance(r, Record)]
    assert len(expected) == 9 + 7

    def check_chunk(chunk):
        file, indices, offsets_, payloads_ = chunk
        assert type(chunk) is tuple and type(file) is str
        assert all(type(v) is list for v in (indices, offsets_, payloads_))
        assert 1 <= chunk_length(chunk) <= 3
        assert indices == sorted(indices)
        return [tuple(r) for r in chunk_records(chunk)]

    pipeline = local_pipeline()
    result = pipeline | "Read" >> ReadTFRecords(files, chunk_size=3)
    assert_that(
        result.records | "Unchunk" >> beam.FlatMap(check_chunk),
        equal_to(expected),
        label="CheckRecords",
    )
    assert_that(
        result.dead_letters | "Indices" >> beam.Map(lambda d: (d.file, d.record_index)),
        equal_to([(str(damaged), 4)]),
        label="CheckDeadLetters",
    )
    pipeline.run().wait_until_finish()


def test_pure_reader_imports_no_beam():
    code = (
        "import sys\n"
        "import transforms.tfrecords\n"
        "assert 'apache_beam' not in sys.modules, 'transforms.tfrecords imported apache_beam'\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("tiny_reads", [False, True], ids=["whole", "tiny"])
@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_on_read_sees_every_raw_byte_once(tmp_path, gzip, tiny_reads):
    # Several 256 KiB blocks; half zeros, so a gzip file is about half its decoded size.
    payloads = [p + bytes(3000) for p in _random_payloads(300, 3000, seed=4)]
    name = "x.tfrecord.gz" if gzip else "x.tfrecord"
    path = write_records(tmp_path / name, payloads, gzip=gzip)
    size = os.path.getsize(path)
    if gzip:
        assert size < 0.6 * sum(16 + len(p) for p in payloads)  # compressed bytes are counted
    calls: list[int] = []
    open_fn = _trickle_open if tiny_reads else None

    records, letters, _ = _read(path, open_fn=open_fn, on_read=calls.append)

    assert letters == [] and [r.data for r in records] == payloads
    assert sum(calls) == size
    assert all(n > 0 for n in calls)
    if tiny_reads:
        assert len(calls) == -(-size // 7)  # every 7-byte read reported, none twice
    else:
        assert len(calls) >= 2


def test_on_read_is_called_as_reading_proceeds(tmp_path):
    payloads = _random_payloads(300, 3000, seed=6)
    path = write_records(tmp_path / "x.tfrecord", payloads)
    calls: list[int] = []

    items = iter_tfrecord_file(str(path), on_read=calls.append)
    first = next(items)

    assert first == Record(str(path), 0, 0, payloads[0])
    assert 0 < sum(calls) < os.path.getsize(path)  # only the first block so far
    list(items)
    assert sum(calls) == os.path.getsize(path)


def test_on_read_is_not_called_for_a_file_that_cannot_be_opened(tmp_path):
    calls: list[int] = []

    [letter] = iter_tfrecord_file(str(tmp_path / "missing.tfrecord"), on_read=calls.append)

    assert isinstance(letter, DeadLetter) and calls == []


def test_read_tfrecord_file_reads_through_beam_filesystems(tmp_path):
    payloads = _examples(6, seed=5)
    plain = write_records(tmp_path / "a.tfrecord", payloads)
    gz = write_records(tmp_path / "a.tfrecord.gz", payloads, gzip=True)

    for path in (plain, gz):
        assert list(read_tfrecord_file(str(path))) == list(iter_tfrecord_file(str(path)))
    assert [r.data for r in read_tfrecord_file(str(gz))] == payloads


def test_beam_read_reports_bytes_read_distribution(tmp_path):
    plain = write_records(tmp_path / "plain.tfrecord", _random_payloads(200, 2000, seed=7))
    gz = write_records(tmp_path / "packed.tfrecord.gz", _examples(50, seed=8), gzip=True)
    missing = tmp_path / "missing.tfrecord"
    files = [str(plain), str(gz), str(missing)]
    sizes = [os.path.getsize(plain), os.path.getsize(gz), 0]

    pipeline = local_pipeline()
    result = pipeline | "Read" >> ReadTFRecords(files, chunk_size=16)
    assert_that(
        result.records | "Count" >> beam.Map(chunk_length) | beam.CombineGlobally(sum),
        equal_to([200 + 50]),
    )
    run = pipeline.run()
    run.wait_until_finish()

    metrics = run.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    distributions = [d for d in metrics["distributions"] if d.key.metric.name == BYTES_READ]
    assert distributions, "no bytes_read distribution reported"
    assert sum(d.committed.sum for d in distributions) == sum(sizes)
    assert sum(d.committed.count for d in distributions) == len(files)  # one update per file
    assert max(d.committed.max for d in distributions) == max(sizes)
    assert min(d.committed.min for d in distributions) == 0  # the missing file
