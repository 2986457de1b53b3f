"""Snapshot selection on validation seeds and the transfer study (small sizes)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import tiny

from metatele.release.checkpoint import save_checkpoint
from metatele.evaluation.evaluate import Curves
from metatele.studies.selection import SelectionConfig, meta_train_selected, validation_score
from metatele.tasks.family import TaskConfig, is_validation_seed
from metatele.meta.config import MetaTrainConfig
from metatele.studies.transfer import TransferConfig, run_transfer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_validation_score_penalises_divergence():
    loss = np.array([[10.0, 10.0], [1.0, 0.1], [0.01, np.inf]])
    c = Curves("m", [0, 1], loss, loss, np.zeros(3))
    assert math.isclose(validation_score(c, [1]), 0.5 * (0 - 1))
    assert math.isclose(validation_score(c, [2]), 0.5 * (-2 + 30))


def test_selection_keeps_the_best_snapshot_on_validation_seeds():
    config = MetaTrainConfig.from_dict(tiny(**{"learned.arch": "coordinatewise", "learned.variant": "update",
                                              "trajectories": 8, "steps": 12, "unroll": 3}))
    result, sel, history = meta_train_selected(config, SelectionConfig(every=2, seeds=3, steps=8, at_steps=(4, 8)),
                                          progress=False)
    assert [h["meta_step"] for h in history] == [0, 2, 4, 6, 8]
    best = min(history, key=lambda h: h["score"])
    assert sel["meta_step"] == best["meta_step"] and sel["score"] == best["score"]
    assert all(is_validation_seed(s) for s in range(*sel["validation_seeds"]))
    # the returned optimizer holds the selected snapshot: re-scoring it reproduces the score
    from metatele.evaluation.evaluate import evaluate
    from metatele.tasks.family import validation_seeds

    curves = evaluate(result.optimizer, config.task, validation_seeds(3), 8, dtype=torch.float64)
    assert math.isclose(validation_score(curves, (4, 8)), sel["score"], rel_tol=1e-9)


def test_transfer_runs_a_checkpoint_on_other_networks_against_tuned_baselines(tmp_path):
    config = MetaTrainConfig.from_dict(tiny(**{"learned.arch": "coordinatewise", "dtype": "float32"}))
    from metatele.optimizers.learned import LearnedOptimizer

    path = save_checkpoint(tmp_path / "cw.safetensors", LearnedOptimizer(config.task, config.learned), config)
    tasks = [TaskConfig([5, 7, 9, 3], "gaussian", bias=True), TaskConfig([4, 6, 5, 5, 2], "gaussian")]
    out = run_transfer(TransferConfig(checkpoints=[str(path)], tasks=tasks, seeds=3, steps=10, tune_seeds=2,
                                      at_steps=(5, 10)), progress=False)
    assert [t["task"] for t in out["tasks"]] == ["gaussian [6, 6, 6, 6]", "gaussian [5, 7, 9, 3] with biases",
                                                "gaussian [4, 6, 5, 5, 2]"]
    for t in out["tasks"]:
        names = list(t["summaries"])
        assert len(names) == 3 and names[0].startswith("gd (lr") and names[1].startswith("adam (lr")
        assert names[2].startswith("Coordinatewise(update+tele)")
        assert set(t["tuning"]) == {"gd", "adam"}
    assert "### gaussian [5, 7, 9, 3] with biases" in out["markdown"] and "log10 loss @ 10" in out["markdown"]


def test_bench_measures_both_architectures_and_the_teleport_gradient_share():
    from metatele.studies.throughput import measure

    paper = measure(4, "update+tele", hidden=8, unrolls=1, device="cpu", dims=[6, 6, 6, 6], unroll=3)
    cw = measure(4, "update+tele", unrolls=1, device="cpu", dims=[6, 8, 9, 4], unroll=3, arch="coordinatewise",
                 bias=True, distribution="gaussian")
    assert paper["teleport_gradient_share"] is None and paper["trajectory_steps_per_s"] > 0
    assert cw["trajectory_steps"] == 12 and 0 < cw["teleport_gradient_share"] < 5
