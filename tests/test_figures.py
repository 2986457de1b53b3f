"""Figures: valid PNG files with labelled, titled, log-scaled axes and a legend."""
from __future__ import annotations

import numpy as np
import pytest

import metatele.evaluation.figures as figures
from metatele.evaluation.evaluate import Curves
from metatele.evaluation.figures import plot_gradsq_vs_loss, plot_loss_vs_step, plot_loss_vs_time
from metatele.evaluation.identity import baseline_id, learned_id

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic(name: str, rate: float, diverge: bool = False, K: int = 8, T: int = 20) -> Curves:
    rng = np.random.default_rng(0)
    t = np.arange(T + 1)[:, None]
    loss = 1e5 * np.exp(-rate * t) * rng.uniform(0.5, 2.0, size=(1, K)) + 10.0
    if diverge:
        loss[T // 2:, 0] = np.inf
    grad_sq = loss ** 1.5
    return Curves(name, list(range(K)), loss, grad_sq, np.linspace(0, 0.5, T + 1))


@pytest.fixture
def curves():
    return {"fast": synthetic("fast", 0.5), "slow": synthetic("slow", 0.1, diverge=True)}


@pytest.fixture
def captured(monkeypatch):
    figs = []
    real = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path: (figs.append(fig), real(fig, path))[1])
    return figs


@pytest.mark.parametrize("plot,xscale", [
    (plot_loss_vs_step, "linear"), (plot_loss_vs_time, "linear"), (plot_gradsq_vs_loss, "log"),
])
def test_plot_writes_a_labelled_png(tmp_path, curves, captured, plot, xscale):
    path = str(tmp_path / "sub" / f"{plot.__name__}.png")
    assert plot(curves, path) == path
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_MAGIC and len(data) > 5000
    ax = captured[0].axes[0]
    assert ax.get_xlabel() and ax.get_ylabel() and captured[0].get_suptitle()
    assert ax.get_yscale() == "log" and ax.get_xscale() == xscale
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["fast", "slow (1/8 diverged)"]


@pytest.mark.parametrize("band", ["quantile", "none"])
def test_loss_vs_step_bands(tmp_path, curves, band):
    path = plot_loss_vs_step(curves, str(tmp_path / "b.png"), band=band)
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC


def test_plot_rejects_bad_arguments(tmp_path, curves):
    with pytest.raises(ValueError, match="band"):
        plot_loss_vs_step(curves, str(tmp_path / "x.png"), band="stderr")
    with pytest.raises(ValueError, match="empty"):
        plot_loss_vs_time({}, str(tmp_path / "x.png"))


def test_loss_plot_range_follows_the_means_and_lets_a_diverging_curve_leave_the_plot():
    from metatele.evaluation.figures import loss_ylim

    steady = np.array([3.0, 2.0, 1.0, 0.5])
    diverging = np.array([3.0, 2.5, 20.0, np.nan])
    lo, hi = loss_ylim([steady, diverging])
    assert lo == pytest.approx(10 ** 0.15) and hi == pytest.approx(10 ** 4.35)  # capped one decade over the start
    lo, hi = loss_ylim([steady])
    assert lo == pytest.approx(10 ** 0.25) and hi == pytest.approx(10 ** 3.25)  # the data's own range, 10% margins
    assert loss_ylim([np.array([np.nan, np.nan])]) is None


FOURTEEN = ["LSTM(update+tele)", "LSTM(update)", "LSTM(lr+tele)", "gd(lr=0.0003)"] + [
    f"{b}(tuned){t}" for b in ("gd", "momentum", "adam", "rmsprop", "adagrad") for t in ("", "+tele")]


def _fourteen_ids():
    ids = {n: learned_id(n, n[5:-1]) for n in FOURTEEN[:3]}
    ids["gd(lr=0.0003)"] = baseline_id("gd(lr=0.0003)")
    for n in FOURTEEN[4:]:
        ids[n] = baseline_id(n, teleport=n.endswith("+tele"), base=n.removesuffix("+tele"))
    return ids


def test_a_method_and_its_teleporting_twin_share_a_colour_and_differ_in_line_style():
    style = figures.styles(_fourteen_ids())
    assert style["gd(tuned)"]["color"] == style["gd(tuned)+tele"]["color"]
    assert style["LSTM(update)"]["color"] == style["LSTM(update+tele)"]["color"]
    assert style["gd(tuned)"]["linestyle"] == "-" and style["gd(tuned)+tele"]["linestyle"] == "--"
    assert style["LSTM(update+tele)"]["linestyle"] == "--" and style["LSTM(update)"]["linestyle"] == "-"
    bases = {n.removesuffix("+tele") for n in FOURTEEN[4:]} | {"gd(lr=0.0003)", "LSTM(update)", "LSTM(lr+tele)"}
    colours = {style[n]["color"] for n in bases}
    assert len(colours) == len(bases) == 8  # one distinct colour per base method


def test_many_methods_are_split_into_panels_with_a_legend_that_explains_the_line_styles(tmp_path, captured):
    curves = {n: synthetic(n, 0.1 + 0.02 * k) for k, n in enumerate(FOURTEEN)}
    plot_loss_vs_step(curves, str(tmp_path / "p.png"), ids=_fourteen_ids())
    learned, baselines = captured[0].axes
    assert (learned.get_title(), baselines.get_title()) == ("learned optimizers", "hand-designed baselines")
    names = [t.get_text() for t in learned.get_legend().get_texts()]
    assert names == FOURTEEN[:3] + ["solid: no teleport", "dashed: with teleport"]
    assert len(baselines.get_legend().get_texts()) == 11 + 2
    plot_gradsq_vs_loss(curves, str(tmp_path / "g.png"), ids=_fourteen_ids())
    ax = captured[1].axes[0]
    assert not ax.collections or all(len(c.get_offsets()) == 0 or c.get_alpha() < 0.5 for c in ax.collections)
    assert len(ax.get_lines()) == 3  # one median curve per learned method, no cloud of points
