"""More samples than a teleported layer's input is wide: refused, unless explicitly allowed; then
warned once, measured and recorded (meta.config, meta.engine, symmetry.action's n > d path)."""
from __future__ import annotations

import warnings

import pytest
import torch

from metatele import cli
from metatele.configs import ConfigError
from metatele.meta.config import MetaTrainConfig, non_symmetric_pairs
from metatele.meta.state import config_differences
from metatele.meta.train import meta_train
from metatele.release.checkpoint import load_checkpoint, save_checkpoint
from metatele.symmetry.action import SymmetryWarning, apply_pinv
from metatele.tasks.family import TaskConfig

from helpers import tiny

pytestmark = pytest.mark.usefixtures("one_thread")
WIDE = "task.dims"


def test_the_rule_names_every_pair_whose_input_is_narrower_than_n():
    assert non_symmetric_pairs(TaskConfig(dims=[20, 20, 20, 20])) == []
    assert non_symmetric_pairs(TaskConfig(dims=[30, 20, 20, 20])) == [(0, 20)]
    assert non_symmetric_pairs(TaskConfig(dims=[8, 10, 6, 12, 3])) == [(1, 6)]  # the data (10 rows) are fine


def test_a_teleporting_config_with_more_samples_than_width_is_refused():
    with pytest.raises(ConfigError, match=r"task\.dims: pair 0 \(W_1, W_2: layer input width 6\) is narrower than "
                                          r"the n = 8 samples.*allow_non_symmetric: true"):
        MetaTrainConfig.from_dict(tiny(**{WIDE: [8, 6, 6, 6]}))
    MetaTrainConfig.from_dict(tiny(**{WIDE: [8, 6, 6, 6], "learned.variant": "update"}))  # no teleport: fine


@pytest.mark.parametrize("variant", ["update", "lr"])
def test_the_opt_in_is_refused_by_a_variant_that_never_teleports_and_dropped_from_old_saved_configs(variant):
    kw = {"learned.variant": variant, "allow_non_symmetric": True}
    if variant == "lr":
        kw["learned.arch"] = "coordinatewise"
    with pytest.raises(ConfigError, match=rf"allow_non_symmetric: does not apply to this run: variant: {variant} "
                                          "never teleports"):
        MetaTrainConfig.from_dict(tiny(**kw))
    saved = MetaTrainConfig.from_dict(tiny(**{**kw, "allow_non_symmetric": False})).to_dict()
    assert MetaTrainConfig.from_saved({**saved, "allow_non_symmetric": True}).allow_non_symmetric is False


def test_the_command_line_refuses_it_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["train", "--config", "quick", "--set", "task.dims=[30,20,20,20]", "--out", str(out),
                     "--wandb", "disabled"]) == 2
    err = capsys.readouterr().err
    assert "layer input width 20" in err and "n = 30" in err and "allow_non_symmetric" in err
    assert not out.exists()


def test_the_opt_in_trains_warns_once_and_records_the_loss_change(tmp_path):
    cfg = MetaTrainConfig.from_dict(tiny(**{WIDE: [8, 6, 6, 6], "allow_non_symmetric": True}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = meta_train(cfg, progress=False)
    symmetry = [w for w in caught if issubclass(w.category, SymmetryWarning)]
    assert len(symmetry) == 1 and "n = 8" in str(symmetry[0].message)
    changes = [row["teleport_loss_change"] for row in result.history]
    assert len(changes) == cfg.meta_steps and all(c > 1e-8 for c in changes)  # not a symmetry: measurable
    path = save_checkpoint(tmp_path / "c.safetensors", result.optimizer, cfg, provenance=result.provenance())
    recorded = load_checkpoint(path).provenance["non_symmetric_teleport"]
    assert recorded == {"pairs": [{"pair": 0, "input_width": 6}], "samples": 8,
                        "max_relative_loss_change": max(changes)}


def test_a_symmetric_run_measures_nothing_extra():
    result = meta_train(MetaTrainConfig.from_dict(tiny()), progress=False)
    assert all("teleport_loss_change" not in row for row in result.history)
    assert "non_symmetric_teleport" not in result.provenance()


def test_the_n_greater_than_d_pseudo_inverse_is_a_triangular_solve_that_never_raises():
    gen = torch.Generator().manual_seed(0)
    h = torch.rand(4, 6, 9, generator=gen, dtype=torch.float64)
    A = torch.rand(4, 5, 9, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(apply_pinv(A, h), A @ torch.linalg.pinv(h), rtol=0, atol=1e-12)
    h[1] = float("nan")  # a diverged trajectory: torch.linalg.pinv would raise (and sync) here
    out = apply_pinv(A, h)
    assert torch.isfinite(out[[0, 2, 3]]).all() and not torch.isfinite(out[1]).all()


def test_a_training_state_written_before_the_opt_in_existed_still_resumes():
    cfg = MetaTrainConfig.from_dict(tiny())
    saved = cfg.to_dict()
    del saved["allow_non_symmetric"]
    assert config_differences(saved, cfg) == []
