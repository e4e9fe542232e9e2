"""Paired across the capacity-gap cells: each row's gain with a wider teacher minus its gain with the width-25
teacher, seed by seed (the same seed is the same student, split and partition), with 95% t-intervals.
Tuned KD is compared at each width's setting chosen on validation. No training: reads trials.csv.

    python docs/study/capacity_gap/across_widths.py
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from raykd import report
from raykd.paired import seed_gains, t_interval

HERE = Path(__file__).resolve().parent
trials = pd.read_csv(HERE / "trials.csv")
knobs = [k for k in ("temperature", "alpha", "beta", "gamma", "warmup") if k in trials]
best = report.summary(report.per_setting(trials, knobs, ["teacher_width"]), knobs, "val_acc", ["teacher_width"])
keys = ["teacher_width", "label", *knobs]
rows = []
for label in dict.fromkeys(best["label"]):
    ours = {r["teacher_width"]: seed_gains(trials, r, keys) for _, r in best[best["label"] == label].iterrows()}
    row = {"method": label}
    for wide in ("w64", "w128"):
        diff = (ours[wide] - ours["w25"]).dropna()
        i = t_interval(diff.to_numpy())
        row[f"{wide} - w25 (pts) [95% CI]"] = f"{100 * i.mean:+.1f} [{100 * i.low:+.1f}, {100 * i.high:+.1f}]"
        row[f"{wide} wins"] = f"{int((diff > 0).sum())}/{len(diff)}"
    rows.append(row)
print(report.markdown(rows))
