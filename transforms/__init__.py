"""igbeam's Beam transforms: read TFRecords, attribute, compute statistics, write a run's outputs.

The public surface, re-exported from the modules that implement it::

    from transforms import ReadBlocks, AttributeBlocks, WriteRunOutputs

Names load on first use (PEP 562), so `import transforms.tfrecords` (the pure record reader) or
`import transforms.constants` does not import Apache Beam.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attribution.lazy import lazy_exports

_EXPORTS = {
    # reading
    "Block": "transforms.records",
    "ReadBlocks": "transforms.records",
    "ReadTFRecords": "transforms.records",
    "ReadTFRecordFiles": "transforms.records",
    "ReadResult": "transforms.records",
    "expand_file_pattern": "transforms.records",
    "Record": "transforms.tfrecords",
    "RecordChunk": "transforms.tfrecords",
    "iter_tfrecord_file": "transforms.tfrecords",
    # attribution
    "AttributeBlocks": "transforms.attribute",
    "AttributedBlock": "transforms.attribute",
    "AttributeBatchDoFn": "transforms.attribute",
    "Attributor": "transforms.attribute",
    "EngineSpec": "transforms.attribute",
    # statistics
    "AttributionStatistics": "transforms.statistics",
    "AttributionStatsCombineFn": "transforms.statistics",
    "ComputeAttributionStatistics": "transforms.statistics",
    # outputs
    "WriteRunOutputs": "transforms.outputs",
    "DeadLetter": "transforms.dead_letters",
    "DEAD_LETTER_SCHEMA": "transforms.dead_letters",
}

__all__ = [
    "DEAD_LETTER_SCHEMA",
    "AttributeBatchDoFn",
    "AttributeBlocks",
    "AttributedBlock",
    "AttributionStatistics",
    "AttributionStatsCombineFn",
    "Attributor",
    "Block",
    "ComputeAttributionStatistics",
    "DeadLetter",
    "EngineSpec",
    "ReadBlocks",
    "ReadResult",
    "ReadTFRecordFiles",
    "ReadTFRecords",
    "Record",
    "RecordChunk",
    "WriteRunOutputs",
    "expand_file_pattern",
    "iter_tfrecord_file",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from transforms.attribute import (
        AttributeBatchDoFn,
        AttributeBlocks,
        AttributedBlock,
        Attributor,
        EngineSpec,
    )
    from transforms.dead_letters import DEAD_LETTER_SCHEMA, DeadLetter
    from transforms.outputs import WriteRunOutputs
    from transforms.records import (
        Block,
        ReadBlocks,
        ReadResult,
        ReadTFRecordFiles,
        ReadTFRecords,
        expand_file_pattern,
    )
    from transforms.statistics import (
        AttributionStatistics,
        AttributionStatsCombineFn,
        ComputeAttributionStatistics,
    )
    from transforms.tfrecords import Record, RecordChunk, iter_tfrecord_file


__getattr__, __dir__ = lazy_exports("transforms", _EXPORTS, globals())
