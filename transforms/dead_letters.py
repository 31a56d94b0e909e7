"""Dead-letter records: what could not be attributed, where it came from and why.

Every stage that can reject input (reading, decoding, validation, the model) emits
`DeadLetter` values on a tagged output instead of raising, so a nightly job never dies on one
bad record and never drops one silently. The raw bytes are kept so a record can be replayed.
"""

from __future__ import annotations

from typing import NamedTuple

import pyarrow as pa

from transforms.constants import (
    DEAD_LETTER_TAG,
    STAGE_DECODE,
    STAGE_MODEL,
    STAGE_READ,
    STAGE_VALIDATE,
    STAGES,
)

__all__ = [
    "DEAD_LETTER_SCHEMA",
    "DEAD_LETTER_TAG",
    "STAGES",
    "STAGE_DECODE",
    "STAGE_MODEL",
    "STAGE_READ",
    "STAGE_VALIDATE",
    "DeadLetter",
    "dead_letter_to_row",
]


class DeadLetter(NamedTuple):
    """One record (or damaged byte span) that was not attributed.

    Attributes:
      file: The input file the bytes came from.
      record_index: Index of the record within its file (-1 when unknown, e.g. a damaged span).
      offset: Byte offset of the record (or damaged span) in the uncompressed stream.
      stage: One of `STAGES`.
      reason: A one-line human-readable reason.
      raw: The raw record bytes (or the damaged span, possibly truncated), for replay.
      key: The example key when one is known, else "".
    """

    file: str
    record_index: int
    offset: int
    stage: str
    reason: str
    raw: bytes
    key: str = ""


DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("file", pa.string(), nullable=False),
        pa.field("record_index", pa.int64(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("raw", pa.large_binary(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
    ]
)


def dead_letter_to_row(letter: DeadLetter) -> dict:
    """Returns `letter` as a dict matching `DEAD_LETTER_SCHEMA`."""
    return letter._asdict()
