"""`python pipeline/launch.py --config job.yaml [Beam options]`: `igbeam run` as a Python file.

For launchers that call a Python file with ``--key=value`` options and no subcommand, such as
Airflow's `BeamRunPythonPipelineOperator` (``py_file``). Exit codes are `igbeam run`'s.
"""

from __future__ import annotations

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
