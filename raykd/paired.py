"""Tuned against untuned, seed by seed: paired differences with intervals, and the tuning benefit's interval.

A seed fixes the split, the partition and the node models, so two method rows run at the same seed face the
same student and teacher; their per-seed difference removes that shared luck, which is most of the spread
between seeds. For each cell, each tuned row (at its setting chosen on validation) is compared with every
untuned row: the mean per-seed difference in test gain, its 95% interval, and the seeds on which the tuned
row wins.

The interval is Student's t with n - 1 degrees of freedom. With 3 to 5 seeds a bootstrap over seeds has only
10 to 126 distinct resamples and its percentile interval is too narrow (it cannot see beyond the observed
range); the t-interval is exact when the differences are normal and honest about small n. The tuning
benefit (tuned gain over the best untuned distillation row's, minus one: a ratio of two noisy means) gets
Fieller's interval for a ratio of paired means; when the denominator's own interval covers zero the ratio is
unbounded and is reported as "n/a" with that reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from raykd.units import ACCURACY, Units

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided interval; the bounds are NaN when fewer than two values exist."""

    mean: float
    low: float
    high: float

    def covers(self, value: float) -> bool:
        return not (self.low > value or self.high < value)


def t_quantile(n: int, confidence: float = CONFIDENCE) -> float:
    """Student's t quantile for a two-sided interval from ``n`` values (NaN below two)."""
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1)) if n > 1 else math.nan


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean of ``values`` and its t-interval (standard error from the sample standard deviation, ddof = 1)."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return Interval(mean, math.nan, math.nan)
    half = t_quantile(len(x), confidence) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return Interval(mean, mean - half, mean + half)


def fieller_interval(
    numerator: Sequence[float], denominator: Sequence[float], confidence: float = CONFIDENCE
) -> Interval | None:
    """Fieller's interval for mean(numerator) / mean(denominator) over paired values; None when unbounded.

    The interval holds every ratio R at which the paired values numerator - R * denominator have a mean that
    a t-test would not reject as zero. It is bounded exactly when the denominator's own t-interval excludes 0.
    """
    a, b = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    n = len(a)
    if n < 2:
        return None
    t2 = t_quantile(n, confidence) ** 2 / n
    cov = np.cov(a, b, ddof=1)
    quad = b.mean() ** 2 - t2 * cov[1, 1]
    if quad <= 0:
        return None
    lin = a.mean() * b.mean() - t2 * cov[0, 1]
    const = a.mean() ** 2 - t2 * cov[0, 0]
    root = math.sqrt(max(lin**2 - quad * const, 0.0))
    return Interval(float(a.mean() / b.mean()), (lin - root) / quad, (lin + root) / quad)


def seed_gains(trials: pd.DataFrame, row: pd.Series, keys: Sequence[str]) -> pd.Series:
    """The test gain per seed of one summary row's setting (NaN-aware on the knobs a method does not have)."""
    done = trials[trials["status"] == "ok"]
    match = np.ones(len(done), dtype=bool)
    for key in keys:
        match &= done[key].isna().to_numpy() if pd.isna(row[key]) else (done[key] == row[key]).to_numpy()
    return done[match].set_index("seed")["gain"]


def comparisons(trials: pd.DataFrame, best: pd.DataFrame, axes: Sequence[str], knobs: Sequence[str]) -> pd.DataFrame:
    """One row per (cell, tuned row, untuned row): the paired differences' mean, interval, and wins."""
    keys = [*axes, "label", *knobs]
    rows = []
    for _, part in best.groupby(list(axes), sort=False) if axes else [((), best)]:
        for _, tuned in part[part["tuned"]].iterrows():
            ours = seed_gains(trials, tuned, keys)
            for _, other in part[~part["tuned"]].iterrows():
                theirs = seed_gains(trials, other, keys)
                diff = (ours - theirs).dropna()
                interval = t_interval(diff.to_numpy())
                rows.append(
                    {
                        **{a: tuned[a] for a in axes},
                        "tuned": tuned["label"],
                        "untuned": other["label"],
                        "seeds": len(diff),
                        "wins": int((diff > 0).sum()),
                        "mean": interval.mean,
                        "low": interval.low,
                        "high": interval.high,
                    }
                )
    return pd.DataFrame(rows)


def tuning_benefit(trials: pd.DataFrame, tuned: pd.Series, rival: pd.Series, keys: Sequence[str]) -> str:
    """The paper's tuning benefit (tuned gain / rival gain - 1) with Fieller's interval, or 'n/a' and why."""
    pair = pd.concat({"tuned": seed_gains(trials, tuned, keys), "rival": seed_gains(trials, rival, keys)}, axis=1)
    pair = pair.dropna()
    if len(pair) < 2:
        return "n/a (fewer than 2 seeds)"
    ratio = fieller_interval((pair["tuned"] - pair["rival"]).to_numpy(), pair["rival"].to_numpy())
    if ratio is None:
        return "n/a (the rival's gain interval covers 0)"
    return f"{100 * ratio.mean:+.0f}% [{100 * ratio.low:+.0f}, {100 * ratio.high:+.0f}]"


def interval_text(mean: float, low: float, high: float, units: Units = ACCURACY) -> str:
    """A difference with its interval, e.g. ``+2.1 [-0.4, +4.6]`` points; the bounds left out where n < 2."""
    if math.isnan(low):
        return f"{units.signed(mean)} [n/a]"
    return f"{units.signed(mean)} [{units.signed(low)}, {units.signed(high)}]"


def paired_rows(paired: pd.DataFrame, axes: Sequence[str], units: Units = ACCURACY) -> list[dict[str, str]]:
    """The comparisons as Markdown-ready rows."""
    return [
        {
            **{a: r[a] for a in axes},
            "tuned row": r["tuned"],
            "against": r["untuned"],
            f"mean difference ({units.gain}) [95% CI]": interval_text(r["mean"], r["low"], r["high"], units),
            "tuned wins": f"{r['wins']}/{r['seeds']} seeds",
        }
        for _, r in paired.iterrows()
    ]
