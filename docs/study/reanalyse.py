"""Re-read the archived 3-seed paper-study run (docs/study/trials.csv) with today's report: paired per-seed
differences with t-intervals and the tuning benefit's Fieller interval. No training: the trials are read back.

    python docs/study/reanalyse.py      # writes docs/study/paired.md, paired.csv and paired_differences.png
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from raykd import report
from raykd.config import load_raw, validate_config

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parents[1] / "tune_configs" / "paper_study.yaml"

raw = load_raw(CONFIG)
raw["seeds"] = [0, 1, 2]  # the archived run's seeds and method rows (DKD and DIST came later)
raw["methods"] = [m for m in raw["methods"] if m["name"] not in ("dkd", "dist")]
study = report.study(validate_config(raw), "paper-study-20261129 (archived), re-read", pd.read_csv(HERE / "trials.csv"))
(HERE / "paired.md").write_text(study.text)
study.paired.to_csv(HERE / "paired.csv", index=False)
study.figures["paired_differences.png"].savefig(HERE / "paired_differences.png", dpi=110)
print(f"wrote {HERE / 'paired.md'} and paired.csv ({len(study.paired)} comparisons)")
