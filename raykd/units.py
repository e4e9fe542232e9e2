"""How a study's numbers read: accuracy points for classifiers, nats per token and perplexity for language models.

A classifier's gain is test accuracy after minus before (shown in points, x100); a language model's is the
drop in test cross-entropy (nats per token, shown as is) and its tables show perplexities. Every table and
figure takes its words and scale from here, so the two tasks share one report.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Units:
    """The scale and names of a study's gain and validation metric."""

    scale: float  # multiplies a gain for display: 100 (accuracy points) or 1 (nats per token)
    gain: str  # short unit of a gain: "pts" or "nats/token"
    gain_long: str  # axis label of a gain
    digits: int  # decimals a gain is shown with
    val_metric: str  # the per-setting validation column a heatmap shows
    val_name: str
    val_scale: float

    def signed(self, value: float) -> str:
        return f"{self.scale * value:+.{self.digits}f}"

    def spread(self, mean: float, std: float) -> str:
        """A gain with its spread over seeds, e.g. ``+4.9 ± 4.2``."""
        return f"{self.signed(mean)} ± {self.scale * std:.{self.digits}f}"


ACCURACY = Units(100.0, "pts", "test accuracy gain (points)", 1, "val_acc", "validation acc %", 100.0)
NATS = Units(1.0, "nats/token", "test cross-entropy drop (nats/token)", 3, "val_ppl", "validation perplexity", 1.0)


def units_of(task: str) -> Units:
    """``data.task``'s units: ``lm`` in nats per token, every other task in accuracy points."""
    return NATS if task == "lm" else ACCURACY
