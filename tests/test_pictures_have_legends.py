"""Issue 16, "what a user sees": every picture the package writes explains its colours (a legend or a
colour bar) and has units on its axes: the traffic scene grids (the traffic renders and the oracle demo)
and the checkerboard report plots."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from genneg.data.traffic.render import VERDICT_LABELS, scene_grid_figure
from genneg.oracles import DrivableMap
from genneg.pipeline import plots


def _legend_texts(fig: Any) -> list[str]:
    texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    for ax in fig.axes:
        if ax.get_legend() is not None:
            texts += [t.get_text() for t in ax.get_legend().get_texts()]
    return texts


def _scene():
    drivable = np.zeros((40, 40), np.uint8)
    drivable[10:30, :] = 1
    road = DrivableMap(drivable, (0.0, 0.0), 0.5)
    boxes = np.array([[[5.0, 10.0, 4.0, 2.0, 0.0], [7.0, 10.0, 4.0, 2.0, 0.0],
                       [15.0, 2.0, 4.0, 2.0, 0.0], [12.0, 3.0, 4.0, 2.0, 0.3]]])
    valid = np.ones((1, 4), bool)
    verdicts = [{"collision": np.array([True, True, False, True]),
                 "offroad": np.array([False, False, True, True])}]
    return road, boxes, valid, verdicts


def test_scene_grid_legend_names_every_colour_used_and_axes_are_in_metres() -> None:
    road, boxes, valid, verdicts = _scene()
    fig = scene_grid_figure([road], boxes, valid, verdicts)
    texts = _legend_texts(fig)
    for key in ("collision", "offroad", "both"):  # orange, red and dark red explained
        assert VERDICT_LABELS[key] in texts
    assert "drivable" in texts and "not drivable" in texts
    assert VERDICT_LABELS["valid"] not in texts  # no valid vehicle in this scene: not in the legend
    ax = fig.axes[0]
    assert ax.get_xlabel() == "x (m)" and ax.get_ylabel() == "y (m)"
    grey = scene_grid_figure([road], boxes, valid, None)
    assert VERDICT_LABELS["unknown"] in _legend_texts(grey)


def test_report_plots_have_legends_and_axis_units(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    saved: list[Any] = []
    real_save = plots._save

    def capture(fig: Any, path: Any):
        saved.append((fig, [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes], _legend_texts(fig)))
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", capture)
    x = np.random.default_rng(0).normal(size=(50, 2))
    plots.plot_samples(tmp_path / "s.png", [("baseline", x, x[:, 0] > 0), ("guided", x, x[:, 1] > 0)])
    plots.plot_classifier_maps(tmp_path / "c.png", [("c1", lambda p, s: p[:, 0] - p[:, 1])], [0.1, 1.0],
                               (-2.0, 2.0, -2.0, 2.0), resolution=8)
    rows = [
        {"group": "baseline", "iteration": 0, "model": "baseline", "infraction": 0.2, "infraction_low": 0.15,
         "infraction_high": 0.25, "elbo": -3.0},
        {"group": "gen_neg", "iteration": 1, "model": "gen-neg 1", "infraction": 0.1, "infraction_low": 0.07,
         "infraction_high": 0.13, "elbo": -2.9},
        {"group": "distilled", "iteration": None, "model": "distilled", "infraction": 0.12,
         "infraction_low": 0.09, "infraction_high": 0.15, "elbo": -2.95},
    ]
    plots.plot_progress(tmp_path / "p.png", rows)
    samples, classifier_maps = saved[0], saved[1]
    assert "valid (oracle)" in samples[2] and "invalid (oracle)" in samples[2]
    assert all("data units" in xl and "data units" in yl for xl, yl in samples[1] if xl)
    labelled = [labels for labels in classifier_maps[1] if labels[0]]
    assert labelled and all("data units" in xl for xl, _ in labelled)
    assert any("P(valid" in yl for _, yl in classifier_maps[1])  # the colour bar's label
    progress = saved[2]
    assert "Gen-neG" in progress[2] and "distilled" in progress[2]
    assert ("iteration (0 = baseline)", "infraction rate (%)") in progress[1]
