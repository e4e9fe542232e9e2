"""Paired statistics of a study's report against values computed by hand (plain pandas/scipy, no Ray)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from raykd import report
from raykd.config import validate_config
from raykd.paired import comparisons, fieller_interval, t_interval, t_quantile, tuning_benefit

T2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom (tables)


def test_t_interval_of_three_values_by_hand() -> None:
    interval = t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, se 1/sqrt(3)
    assert t_quantile(3) == pytest.approx(T2)
    assert (interval.mean, interval.low, interval.high) == pytest.approx(
        (2, 2 - T2 / math.sqrt(3), 2 + T2 / math.sqrt(3))
    )
    assert interval.covers(0.0) and not interval.covers(5.0)
    assert math.isnan(t_interval([0.4]).low)


def test_fieller_with_a_constant_denominator_is_the_numerators_interval_scaled() -> None:
    ratio = fieller_interval([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
    assert ratio is not None
    assert (ratio.mean, ratio.low, ratio.high) == pytest.approx(
        (1, (2 - T2 / math.sqrt(3)) / 2, (2 + T2 / math.sqrt(3)) / 2)
    )


def test_fieller_bounds_are_where_the_t_test_of_the_paired_combination_just_rejects() -> None:
    a, b = [0.5, 1.5, 1.0, 2.0], [1.0, 1.2, 0.9, 1.4]
    ratio = fieller_interval(a, b)
    assert ratio is not None and ratio.low < ratio.mean < ratio.high
    for bound in (ratio.low, ratio.high):
        combined = [x - bound * y for x, y in zip(a, b, strict=True)]
        edge = t_interval(combined)
        assert min(abs(edge.low), abs(edge.high)) == pytest.approx(0, abs=1e-9)  # 0 sits on the interval's edge


def test_fieller_is_unbounded_when_the_denominators_interval_covers_zero() -> None:
    assert fieller_interval([0.1, 0.2, 0.3], [1.0, -1.0, 0.5]) is None
    assert fieller_interval([0.1], [1.0]) is None


def hand_table() -> pd.DataFrame:
    """Three seeds; kd-tuned at T=2 wins on validation; per-seed gains chosen for easy hand arithmetic."""
    rows = []
    for seed, (tuned2, tuned4, untuned, base) in enumerate(
        [(0.05, 0.01, 0.02, 0.01), (0.03, 0.00, 0.01, 0.02), (0.04, 0.02, 0.03, 0.00)]
    ):
        for label, temperature, gain, val in (
            ("kd-tuned", 2.0, tuned2, 0.6),
            ("kd-tuned", 4.0, tuned4, 0.5),
            ("kd-untuned", 4.0, untuned, 0.5),
            ("no-kd", math.nan, base, 0.4),
        ):
            alpha = math.nan if label == "no-kd" else 0.5
            rows.append({"label": label, "temperature": temperature, "alpha": alpha, "seed": seed, "gain": gain})
            rows[-1]["val_acc"] = val
    trials = pd.DataFrame(rows)
    for column in ("local_val_acc", "test_acc", "test_acc_before", "wall_s"):
        trials[column] = 0.5
    trials["status"], trials["epochs"], trials["order"] = "ok", 2, range(len(trials))
    return trials


def test_paired_differences_of_a_small_table_by_hand() -> None:
    trials = hand_table()
    best = report.summary(report.per_setting(trials, ["temperature"]), ["temperature"], "val_acc")
    pairs = comparisons(trials, best, [], ["temperature"]).set_index("untuned")
    # against no-kd: differences 0.04, 0.01, 0.04 -> mean 0.03, sd sqrt(0.0003), 3 wins
    half = T2 * math.sqrt(0.0003) / math.sqrt(3)
    assert pairs.loc["no-kd", ["mean", "low", "high"]].tolist() == pytest.approx([0.03, 0.03 - half, 0.03 + half])
    assert pairs.loc["no-kd", "wins"] == 3 and pairs.loc["no-kd", "seeds"] == 3
    # against kd-untuned: 0.03, 0.02, 0.01 -> mean 0.02, sd 0.01
    half = T2 * 0.01 / math.sqrt(3)
    assert pairs.loc["kd-untuned", ["mean", "low", "high"]].tolist() == pytest.approx([0.02, 0.02 - half, 0.02 + half])
    tuned, rival = (best[best["label"] == label].iloc[0] for label in ("kd-tuned", "kd-untuned"))
    # the rival's gains 0.02, 0.01, 0.03: mean 0.02 < t * se = 4.30 * 0.01 / sqrt(3), so the ratio is unbounded
    assert fieller_interval([0.03, 0.02, 0.01], [0.02, 0.01, 0.03]) is None
    assert tuning_benefit(trials, tuned, rival, ["label", "temperature"]) == "n/a (the rival's gain interval covers 0)"


def test_a_study_report_holds_the_paired_section_and_orders_rows_by_the_config(tmp_path, cache_dir) -> None:
    from tests.conftest import tiny_raw

    raw = tiny_raw(tmp_path, cache_dir, seeds=[0, 1, 2])
    raw["methods"] = [{"name": "ce", "label": "no-kd"}, {"name": "kd", "label": "kd-tuned", "temperature": [2.0, 4.0]}]
    raw["methods"].insert(1, {"name": "kd", "label": "kd-untuned", "temperature": 4.0})
    cfg = validate_config(raw)
    trials = hand_table()
    shuffled = trials.sample(frac=1.0, random_state=0).reset_index(drop=True)
    assert report.in_config_order(shuffled, cfg)[["label", "temperature", "seed"]].equals(
        report.in_config_order(trials, cfg)[["label", "temperature", "seed"]]
    )
    assert list(report.in_config_order(shuffled, cfg)["label"].drop_duplicates()) == ["no-kd", "kd-untuned", "kd-tuned"]
    study = report.study(cfg, "hand", shuffled)
    assert study.text == report.study(cfg, "hand", trials).text
    assert "## Paired differences: tuned minus untuned" in study.text
    assert "| kd-tuned | no-kd | +3.0 [" in study.text and "3/3 seeds" in study.text
    assert "paired_differences.png" in study.figures and len(study.paired) == 2
