"""A study's cells (one combination of axis variants): grouping result rows by them, and naming them."""

from __future__ import annotations

import pandas as pd


def by_cell(frame: pd.DataFrame, axes: list[str]) -> list[tuple[dict[str, str], pd.DataFrame]]:
    """(cell variants, its rows) per combination of ``axes`` present, in order of appearance."""
    if not axes:
        return [({}, frame)]
    return [(dict(zip(axes, key, strict=True)), part) for key, part in frame.groupby(axes, sort=False)]


def cell_name(cell: dict[str, str]) -> str:
    return ", ".join(f"{axis}={variant}" for axis, variant in cell.items())
