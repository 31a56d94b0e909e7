"""Unit tests of tfx-bsl decoding, schema inference and Arrow -> dense model inputs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from google.protobuf import text_format
from helpers import example_bytes as example
from tensorflow_metadata.proto.v0 import schema_pb2

from transforms.decode import ExampleDecoder, dense_column, fixed_length, infer_schema


def test_infer_schema_skips_garbage_and_fixes_shapes():
    records = [
        example(x=[1.0, 2.0], n=[3], s=[b"a"]),
        b"\x01garbage",
        example(x=[0.5, 0.25], n=[4, 5], s=[b"b"]),
        example(x=[0.0, 1.0], s=[b"c"]),
    ]
    schema = infer_schema(records)
    by_name = {f.name: f for f in schema.feature}
    assert by_name["x"].type == schema_pb2.FLOAT and fixed_length(schema, "x") == 2
    assert by_name["s"].type == schema_pb2.BYTES and fixed_length(schema, "s") == 1
    assert by_name["n"].type == schema_pb2.INT and fixed_length(schema, "n") is None
    assert by_name["n"].presence.min_fraction == 0.0


def test_decoder_isolates_bad_records_and_recovers_after_a_type_error():
    schema = text_format.Parse(
        'feature { name: "x" type: FLOAT } feature { name: "k" type: BYTES }', schema_pb2.Schema()
    )
    decoder = ExampleDecoder(schema)
    records = [example(x=[1.0], k=[b"a"]), example(x=[7], k=[b"b"]), b"junk", example(x=[2.0])]
    batch, good, reasons = decoder.decode(records)
    assert good == [0, 3]
    assert reasons[0] == "" and reasons[3] == ""
    assert "wrong type" in reasons[1] and '"x"' in reasons[1]
    assert reasons[2].startswith("not a valid tf.train.Example")
    assert batch.column(0).to_pylist() == [[1.0], [2.0]]
    # The next batch decodes normally.
    batch, good, _ = decoder.decode([example(x=[3.0], k=[b"c"])])
    assert good == [0] and batch.num_rows == 1


def test_dense_column_reasons():
    column = pa.array(
        [[1.0, 2.0], None, [1.0], [np.nan, 0.0], [np.inf, 1.0], [3.0, 4.0]],
        pa.large_list(pa.float32()),
    )
    values, reasons = dense_column(column, 2, np.float32, "x")
    assert reasons == [
        "",
        "feature 'x' is missing",
        "feature 'x' has 1 values, expected 2",
        "feature 'x' has NaN or Inf values",
        "feature 'x' has NaN or Inf values",
        "",
    ]
    np.testing.assert_array_equal(values[[0, 5]], [[1.0, 2.0], [3.0, 4.0]])
    assert values.dtype == np.float32
    empty, none = dense_column(pa.array([], pa.large_list(pa.float32())), 3, np.float32, "x")
    assert empty.shape == (0, 3) and none is None


def test_dense_column_fast_path_and_slices():
    column = pa.array([[1, 2], [3, 4], [5, 6], [7, 8]], pa.large_list(pa.int64()))
    values, reasons = dense_column(column, 2, np.int32, "ids")
    assert reasons is None  # every row usable: no per-row reasons are built
    np.testing.assert_array_equal(values, [[1, 2], [3, 4], [5, 6], [7, 8]])
    assert values.dtype == np.int32
    values, reasons = dense_column(column.slice(1, 2), 2, np.int32, "ids")
    assert reasons is None
    np.testing.assert_array_equal(values, [[3, 4], [5, 6]])
    sliced_bad = pa.array([[1.0], [np.nan], [2.0]], pa.large_list(pa.float32())).slice(1, 2)
    values, reasons = dense_column(sliced_bad, 1, np.float32, "x")
    assert reasons == ["feature 'x' has NaN or Inf values", ""]
    assert values[1, 0] == 2.0


def test_dense_column_regular_offsets_of_both_list_types():
    # Regular offsets take the fast path for list (int32 offsets) and large_list (int64); a
    # NaN in such a column still gets its reason.
    for list_type in (pa.list_(pa.float32()), pa.large_list(pa.float32())):
        clean = pa.array([[1.0, 2.0], [3.0, 4.0]], list_type)
        values, reasons = dense_column(clean, 2, np.float32, "v")
        assert reasons is None
        np.testing.assert_array_equal(values, [[1.0, 2.0], [3.0, 4.0]])
        with_nan = pa.array([[1.0, 2.0], [np.nan, 4.0], [5.0, 6.0]], list_type)
        values, reasons = dense_column(with_nan, 2, np.float32, "v")
        assert reasons == ["", "feature 'v' has NaN or Inf values", ""]
        np.testing.assert_array_equal(values[2], [5.0, 6.0])
        # Regular lengths but the wrong number per example: not mistaken for the fast path.
        values, reasons = dense_column(clean, 1, np.float32, "v")
        assert reasons == ["feature 'v' has 2 values, expected 1"] * 2
