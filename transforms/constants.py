"""Names shared by the transforms, the job and the tools that read a run: one place for each.

Pure constants (no imports), so anything can use them: the Beam transforms, the launcher, the
summary, and readers of a run's outputs.
"""

from __future__ import annotations

# Beam metrics: every counter and distribution igbeam reports lives in this namespace.
METRICS_NAMESPACE = "igbeam"

# Counters of the record reader.
FILES_READ = "files_read"
RECORDS_READ = "records_read"
READ_DEAD_LETTERS = "read_dead_letters"
BYTES_READ = "bytes_read"  # a distribution: raw (compressed) bytes read, one update per file

# Counters and distributions of the attribution step.
EXAMPLES_ATTRIBUTED = "examples_attributed"
BATCHES = "batches"
MODEL_LOADS = "model_loads"
MODEL_FAILURES = "model_failures"
ABS_DELTA_MICROS = "abs_delta_micros"

# Dead-letter stages, in pipeline order, and the counter of each.
STAGE_READ = "read"
STAGE_DECODE = "decode"
STAGE_VALIDATE = "validate"
STAGE_MODEL = "model"
STAGES = (STAGE_READ, STAGE_DECODE, STAGE_VALIDATE, STAGE_MODEL)
DEAD_LETTER_COUNTERS = {
    STAGE_READ: READ_DEAD_LETTERS,
    STAGE_DECODE: "dead_letters_decode",
    STAGE_VALIDATE: "dead_letters_validate",
    STAGE_MODEL: "dead_letters_model",
}

# Columns of the per-example attributions.
KEY_COLUMN = "key"
ATTRIBUTION_PREFIX = "attr_"  # attr_<feature>: one column per attributed feature (or layer)
INPUT_PREFIX = "in_"  # in_<feature>: the attributed feature's input value (output.input_values)
STEPS_COLUMN = "steps"  # with attribution.steps auto: the steps each example used (int32)
WITHIN_TOLERANCE_COLUMN = "within_tolerance"  # with auto: relative error <= tolerance (bool)
OUTPUT_RANK_COLUMN = "output_rank"  # target kinds top_k/indices: rank of the row's output (int32)
OUTPUT_NAME_COLUMN = "output_name"  # with attribution.display_names: the output's name (string)
APPROXIMATION_ERROR_COLUMN = "approximation_error"  # Vertex's: |delta| / |F(x) - F(x')| (float64)
GRID_PREFIX = "grid_"  # grid_<image>: |attribution| summed per grid cell (transforms.images)
FULL_PREFIX = "full_"  # full_<image>: every attribution, float16 (output.full_image_attributions)

# Counts of adaptive steps (counts.json): STEPS_USED_PREFIX + "<steps>" examples each, and those
# still above tolerance at max_steps.
STEPS_USED_PREFIX = "steps_used_"
ABOVE_TOLERANCE = "above_tolerance"

# Tagged outputs.
DEAD_LETTER_TAG = "dead_letter"

# The layout of a run's output directory (`output.path`).
ATTRIBUTIONS_DIR = "attributions"  # part-*.parquet, one row per example
STATISTICS_DIR = "statistics"
FEATURE_STATISTICS_FILE = "features.parquet"  # in STATISTICS_DIR: per slice and feature
SLICE_STATISTICS_FILE = "slices.parquet"  # in STATISTICS_DIR: per slice
HISTOGRAMS_FILE = "histograms.parquet"  # in STATISTICS_DIR: attribution and input histograms
INPUT_STATISTICS_FILE = "inputs.parquet"  # in STATISTICS_DIR: input value statistics
FEATURE_REPLICATES_FILE = "features_replicates.parquet"  # in STATISTICS_DIR: per replicate
SLICE_REPLICATES_FILE = "slices_replicates.parquet"  # in STATISTICS_DIR: per replicate
IMAGE_GRIDS_FILE = "image_grids.parquet"  # in STATISTICS_DIR: mean |attr| per image grid cell
DEAD_LETTER_DIR = "dead_letter"  # part-*.parquet, records not attributed
DUPLICATE_KEYS_DIR = "duplicate_keys"  # part-*.parquet, keys seen more than once
EXPLANATIONS_DIR = "explanations"  # output.format vertex_jsonl: part-*.jsonl[.gz], Vertex's lines
SCHEMA_FILE = "schema.pbtxt"  # the TFMD schema used
COUNTS_FILE = "counts.json"  # the pipeline's own counts, as data (every runner), and workers
SUMMARY_FILE = "summary.json"
SUCCESS_FILE = "_SUCCESS"  # written last
OUTPUT_PARTS = (
    ATTRIBUTIONS_DIR,
    STATISTICS_DIR,
    DEAD_LETTER_DIR,
    DUPLICATE_KEYS_DIR,
    EXPLANATIONS_DIR,
    SCHEMA_FILE,
    COUNTS_FILE,
    SUMMARY_FILE,
)
"""Everything a run writes except `SUCCESS_FILE`; a rerun removes these first."""

# Blocks: the unit a worker reads, attributes and writes (one attributions file, one row group).
BLOCK_BYTES = 64 << 20  # serialized record bytes per block, at most (rows: output.row_group_rows)
