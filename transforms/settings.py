"""The settings of a run's statistics, declared once (no Beam): the job config's `statistics`.

`transforms.statistics.AttributionStatsCombineFn` takes its defaults from here, and
`pipeline.config.JobConfig` embeds the section.
"""

from __future__ import annotations

import dataclasses

from attribution.errors import SettingsError
from attribution.fields import Boolean, Integer, setting

__all__ = ["StatisticsConfig"]


@dataclasses.dataclass(frozen=True)
class StatisticsConfig:
    """What a run records besides per-example attributions, so that runs compare without rows.

    Attributes:
      replicates: Key-hash replicates: every statistic is also kept for this many deterministic
        sub-samples of each slice (an example's replicate is a hash of its key), from which a
        comparison measures each score's noise floor. 0 turns them off; otherwise >= 2.
      histogram_buckets: Equal-mass buckets of the attribution and input histograms.
      top_values: Most frequent values kept per categorical input.
      inputs: Record input value statistics of every attributed and pass-through feature.
    """

    replicates: int = setting(4, check=Integer(0))
    histogram_buckets: int = setting(20, check=Integer(2))
    top_values: int = setting(20, check=Integer(1))
    inputs: bool = setting(True, check=Boolean())

    def cross_check(self, prefix: str) -> None:
        """One replicate would only repeat the whole slice."""
        if self.replicates == 1:
            raise SettingsError(
                "must be 0 (no replicates) or >= 2, got 1",
                f"{prefix}.replicates" if prefix else "replicates",
            )
