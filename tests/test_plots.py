"""Figures a person reads: nothing cut off."""

from __future__ import annotations

import pandas as pd
import pytest

from raykd.plots import gain_bars
from raykd.tracking import close_figure


@pytest.mark.parametrize("rows", [1, 3, 12])
def test_gain_bars_title_fits_inside_the_figure(rows: int) -> None:
    best = pd.DataFrame({"label": [f"row{i}" for i in range(rows)], "gain": [0.01] * rows, "gain_std": [0.0] * rows})
    fig = gain_bars(best)
    fig.canvas.draw()
    title, frame = fig.axes[0].title.get_window_extent(), fig.bbox
    close_figure(fig)
    assert frame.x0 <= title.x0 and title.x1 <= frame.x1, (title, frame)
