"""Warm starts (``init_from``): a run that begins from another run's training state, under another
config that may differ from the source's in the safeguard settings only."""
from __future__ import annotations

import hashlib
import shutil

import pytest
import torch

from helpers import same_parameters, tiny

from metatele.configs import ConfigError
from metatele.meta.checkpointer import TrainingCheckpointer, resumable_callback
from metatele.meta.config import MetaTrainConfig, load_config
from metatele.meta.engine import UnrollEngine
from metatele.meta.mixture import build_engine
from metatele.meta.state import state_files
from metatele.meta.train import meta_train
from metatele.meta.warmstart import warm_start, warm_start_totals
from metatele.release.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

CW = {"learned.arch": "coordinatewise", "steps": 30, "unroll": 5, "trajectories": 8, "batch_size": 4}
SAFEGUARDED = {"learned.coordinatewise.update_safeguard": True, "learned.coordinatewise.update_backoff": 0.5}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A coordinatewise update+tele run stopped after 4 meta-steps: its config and state file."""
    out = tmp_path_factory.mktemp("source")
    config = MetaTrainConfig.from_dict(tiny(**CW))
    engine, saver = UnrollEngine(config), TrainingCheckpointer(config, out, every=1, keep=1, handle_signals=False)
    for _ in range(4):
        saver(engine, engine.meta_step())
    (step, path), = state_files(out)
    assert step == 4
    return engine, path


def warm(path, **kw) -> MetaTrainConfig:
    return MetaTrainConfig.from_dict(tiny(**{**CW, **SAFEGUARDED, "init_from": str(path), "train_seed_start": 100,
                                             "lr_update": 2e-3, **kw}))


def test_a_warm_start_begins_from_the_source_meta_parameters_and_adam_moments_at_its_own_rates(source):
    src, path = source
    config = warm(path)
    engine = build_engine(config)
    assert not same_parameters(engine, src)  # a fresh initialisation differs
    record = warm_start(engine, config)
    assert same_parameters(engine, src)
    a, b = engine.meta_opt.state_dict(), src.meta_opt.state_dict()
    assert a["state"].keys() == b["state"].keys() and all(
        torch.equal(a["state"][i][k], b["state"][i][k]) for i in a["state"] for k in ("step", "exp_avg", "exp_avg_sq"))
    assert [g["lr"] for g in engine.meta_opt.param_groups] == [2e-3, 1e-3]  # this run's rates, not the source's
    assert record == engine.init_source
    assert record["meta_steps"] == 4 and record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["changed"] == ["learned.coordinatewise.update_backoff (source None, now 0.5)",
                                 "learned.coordinatewise.update_safeguard (source False, now True)"]
    # it trains on, under its own config: the safeguard's step scale is in the trajectories' state
    engine.meta_step()
    assert engine.trajectories.state.update[1].shape[0] == 2


def test_the_warm_start_is_recorded_in_the_checkpoint_and_survives_a_resume_without_its_source(source, tmp_path):
    src, path = source
    moved = tmp_path / "source.safetensors"
    shutil.copy(path, moved)
    config = warm(moved, max_meta_steps=6)
    ref = meta_train(config, progress=False)
    out = tmp_path / "run"
    cb = TrainingCheckpointer(config, out, every=1, keep=2, handle_signals=False)
    eng = build_engine(config)
    warm_start(eng, config)
    for _ in range(3):
        cb(eng, eng.meta_step())
    moved.unlink()  # a resumed run restores its own state: it no longer needs the source
    eng, cb = resumable_callback(config, out, resume=True, every=1, keep=2, handle_signals=False)
    res = meta_train(config, progress=False, callback=cb, engine=eng)
    assert same_parameters(res.optimizer.state_dict(), ref.optimizer.state_dict())
    assert res.init_source == ref.init_source and res.init_source["meta_steps"] == 4
    save_checkpoint(tmp_path / "ck.safetensors", res.optimizer, config, provenance=res.provenance())
    ck = load_checkpoint(tmp_path / "ck.safetensors")
    assert ck.provenance["init_from"]["sha256"] == res.init_source["sha256"]
    assert ck.training_seeds == [range(0, src.next_seed), range(100, res.train_seeds[1])]  # the source's, then its own
    # what the benchmark and manifests add to its own counts: the source's (and its sources')
    assert warm_start_totals(ck.provenance) == {"meta_steps": 4, "trajectory_steps": 0,
                                                "train_seconds": pytest.approx(src.train_seconds, abs=0.1)}
    twice = {"init_from": {"meta_steps": 7, "trajectory_steps": 70, "train_seconds": 2.0, "init_from": ck.provenance["init_from"]}}
    assert warm_start_totals(twice)["meta_steps"] == 11 and warm_start_totals({"meta_steps": 3}) == \
        {"meta_steps": 0, "trajectory_steps": 0, "train_seconds": 0.0}


@pytest.mark.parametrize("change, named", [
    ({"learned.variant": "update"}, "learned.variant"),
    ({"learned.coordinatewise.magnitude_scale": 3.0}, "learned.coordinatewise.magnitude_scale"),
])
def test_a_warm_start_refuses_another_learned_optimizer_naming_what_differs(source, change, named):
    _, path = source
    config = warm(path, **change)
    with pytest.raises(ConfigError, match=rf"init_from: .*another learned optimizer: {named} \(source"):
        warm_start(build_engine(config), config)


def test_a_warm_start_refuses_a_missing_file_and_a_checkpoint(source, tmp_path):
    src, path = source
    config = warm(tmp_path / "nothing.safetensors")
    with pytest.raises(ConfigError, match="does not exist"):
        warm_start(build_engine(config), config)
    ck = save_checkpoint(tmp_path / "ck.safetensors", src.optimizer, src.config)
    config = warm(ck)
    with pytest.raises(ConfigError, match="is not a training state written by metatele train"):
        warm_start(build_engine(config), config)
    with pytest.raises(ConfigError, match="init_from"):
        MetaTrainConfig.from_dict(tiny(init_from=""))


def test_a_generalist_warm_starts_with_its_snapshot_average_at_the_source_meta_parameters(tmp_path):
    small = ["mix.pool=2", "batch_size=2", "validation.seeds=2", "validation.steps=10", "validation.at_steps=[10]",
             "steps=20", "unroll=5"]
    config = load_config("ship/generalist_update_tele", small)
    src = build_engine(config)
    saver = TrainingCheckpointer(config, tmp_path, every=1, keep=1, handle_signals=False)
    for _ in range(2):
        saver(src, src.meta_step())
    (_, path), = state_files(tmp_path)
    config = load_config("ship/generalist_update_tele", small + [f"init_from={path}", "train_seed_start=500000",
                                                                 "learned.coordinatewise.update_safeguard=true"])
    engine = build_engine(config)
    warm_start(engine, config)
    assert same_parameters(engine, src)
    assert all(torch.equal(a, p) for a, p in zip(engine.snapshots.average, engine.meta_parameters))
    assert engine.meta_step()["diverged"] == 0
