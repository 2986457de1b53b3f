"""Resumable meta-training: training-state files, rotation, refusal of foreign configs, and runs
killed (SIGKILL) or stopped (SIGTERM) mid-way that resume to the uninterrupted result bit for bit."""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from metatele import cli, commands
from metatele.release.checkpoint import load_checkpoint
from metatele.meta.engine import UnrollEngine
from metatele.meta.checkpointer import TrainingCheckpointer, resumable_callback
from metatele.meta.state import STATE_DIR, ResumeError, decode, latest_state, load_training_state, state_files
from metatele.meta.train import meta_train
from metatele.meta.config import MetaTrainConfig

from helpers import subprocess_env, tiny

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]






def params_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def wait_for(path_glob: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    t0 = time.time()
    while not list(path_glob.parent.glob(path_glob.name)):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, "no checkpoint appeared"
        time.sleep(0.01)


# -- in-process: the file format and the checkpointer --------------------------------------------
def test_training_state_restores_the_engine_bit_for_bit(tmp_path):
    cfg = MetaTrainConfig.from_dict(tiny(truncation="log_uniform", unroll=2, unroll_max=5, trajectories=40))
    a = UnrollEngine(cfg)
    for _ in range(3):
        a.meta_step()
    TrainingCheckpointer(cfg, tmp_path, handle_signals=False).save(a)
    b, doc = load_training_state(tmp_path)
    assert doc["meta_step"] == 3 and doc["config"] == cfg.to_dict()
    for _ in range(4):  # numpy (truncation lengths), trajectories, Adam: all restored
        ma, mb = a.meta_step(), b.meta_step()
        assert ma["unroll"] == mb["unroll"] and ma["meta_loss"] == mb["meta_loss"]
    assert params_equal(a.optimizer.state_dict(), b.optimizer.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(a.trajectories.W, b.trajectories.W))
    assert (a.trajectories.seeds == b.trajectories.seeds).all() and a.next_seed == b.next_seed


def test_checkpoints_rotate_keeping_the_newest_n(tmp_path):
    cfg = MetaTrainConfig.from_dict(tiny(trajectories=24))  # 12 meta-steps
    cb = TrainingCheckpointer(cfg, tmp_path, every=2, keep=3, handle_signals=False)
    meta_train(cfg, progress=False, callback=cb)
    assert [s for s, _ in state_files(tmp_path)] == [12, 10, 8]
    path, _, doc, _ = latest_state(tmp_path)
    assert doc["meta_step"] == 12 and len(doc["history"]) == 12
    assert doc["training_seeds"] == [[0, 24]]  # exactly the 24 trajectories trained, in every file
    assert not list((tmp_path / STATE_DIR).glob(".*.tmp"))


def test_loading_never_unpickles_and_falls_back_to_an_older_good_file(tmp_path):
    cfg = MetaTrainConfig.from_dict(tiny())
    eng = UnrollEngine(cfg)
    eng.meta_step()
    TrainingCheckpointer(cfg, tmp_path, handle_signals=False).save(eng)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    folder = tmp_path / STATE_DIR
    (folder / "state-00000009.safetensors").write_bytes(pickle.dumps(Evil()))
    torch.save({"x": Evil()}, folder / "state-00000008.safetensors")
    good = (folder / "state-00000001.safetensors").read_bytes()
    (folder / "state-00000007.safetensors").write_bytes(good[: len(good) // 2])  # truncated
    for bad in ("state-00000009.safetensors", "state-00000008.safetensors", "state-00000007.safetensors"):
        with pytest.raises(ResumeError):
            decode((folder / bad).read_bytes(), bad)
    path, _, doc, _ = latest_state(tmp_path)
    assert path.name == "state-00000001.safetensors" and doc["meta_step"] == 1
    assert not marker.exists()
    # the damaged newer files left the rotation, so they can never push a good file out
    assert [s for s, _ in state_files(tmp_path)] == [1]
    assert len(list(folder.glob("*.damaged"))) == 3


def test_resume_refuses_a_different_config_naming_the_keys(tmp_path, capsys):
    cfg = MetaTrainConfig.from_dict(tiny())
    eng = UnrollEngine(cfg)
    eng.meta_step()
    TrainingCheckpointer(cfg, tmp_path, handle_signals=False).save(eng)
    other = MetaTrainConfig.from_dict(tiny(lr_update=2e-3, **{"learned.lstm.hidden": 8}))
    with pytest.raises(ResumeError) as e:
        resumable_callback(other, tmp_path, resume=True, handle_signals=False)
    msg = str(e.value)
    assert "lr_update (saved 0.001, now 0.002)" in msg and "learned.lstm.hidden (saved 16, now 8)" in msg
    # the same through the command line: exit status 2, message on stderr, nothing computed
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(tiny()))
    rc = cli.main(["train", "--config", str(cfg_file), "--out", str(tmp_path), "--resume", "--no-progress",
                   "--set", "lr_update=0.002", "--wandb", "disabled"])
    err = capsys.readouterr().err
    assert rc == 2 and "lr_update (saved 0.001, now 0.002)" in err
    # and a new run may not silently overwrite an existing one
    with pytest.raises(ResumeError, match="pass --resume"):
        resumable_callback(cfg, tmp_path, resume=False, handle_signals=False)
    # a different device is allowed (it does not change what is computed)
    engine, cb = resumable_callback(MetaTrainConfig.from_dict(tiny(device="auto")), tmp_path, resume=True,
                                    handle_signals=False)
    assert engine.meta_step_count == 1 and cb.history == engine.prior_history


def test_a_run_resumed_with_another_budget_is_the_same_run_up_to_its_new_end(tmp_path):
    """The budget only says when the run ends: a run started with 10 meta-steps, stopped at 3 and
    resumed with 6 ends exactly where an uninterrupted 6-step run does; a budget already spent, or a
    new budget for a run that has ended, is refused."""
    ref = meta_train(MetaTrainConfig.from_dict(tiny(trajectories=40, max_meta_steps=6)), progress=False)
    long = MetaTrainConfig.from_dict(tiny(trajectories=40, max_meta_steps=10))
    eng = UnrollEngine(long)
    for _ in range(3):
        eng.meta_step()
    TrainingCheckpointer(long, tmp_path, handle_signals=False).save(eng)
    with pytest.raises(ResumeError, match="max_meta_steps=3 is spent"):
        spent = MetaTrainConfig.from_dict(tiny(trajectories=40, max_meta_steps=3))
        resumable_callback(spent, tmp_path, resume=True, handle_signals=False)
    short = MetaTrainConfig.from_dict(tiny(trajectories=40, max_meta_steps=6))
    engine, cb = resumable_callback(short, tmp_path, resume=True, handle_signals=False)
    res = meta_train(short, progress=False, callback=cb, engine=engine)
    assert engine.meta_step_count == 6
    assert params_equal(res.optimizer.state_dict(), ref.optimizer.state_dict())
    cb.finish()
    # the run has ended (its final state is saved): a new budget is refused, not silently a no-op
    more = MetaTrainConfig.from_dict(tiny(trajectories=40, max_meta_steps=8))
    with pytest.raises(ResumeError, match="the run ended at meta-step 6"):
        resumable_callback(more, tmp_path, resume=True, handle_signals=False)
    # and a spent budget of seconds too
    timed = MetaTrainConfig.from_dict(tiny(trajectories=40, max_meta_steps=10, max_seconds=1e-6))
    with pytest.raises(ResumeError, match=r"max_seconds=1e-06 is spent"):
        resumable_callback(timed, tmp_path, resume=True, handle_signals=False)


def test_tele_variant_resumes_bitwise_from_any_meta_step_with_staggered_random_truncations(tmp_path):
    """The tele variant's base optimizer keeps its moments per trajectory (saved with the rest),
    so it resumes mid-trajectory, with staggered starts and log-uniform truncations."""
    cfg = MetaTrainConfig.from_dict(tiny(trajectories=12, steps=9, stagger=True, truncation="log_uniform",
                                         unroll_max=4, **{"learned.variant": "tele",
                                                          "learned.base": {"name": "adam", "lr": 0.01}}))
    ref = meta_train(cfg, progress=False)
    cb = TrainingCheckpointer(cfg, tmp_path, every=1, keep=10, handle_signals=False)
    eng = UnrollEngine(cfg)
    for _ in range(3):
        cb(eng, eng.meta_step())
    assert (eng.trajectories.steps_done % cfg.steps != 0).any()  # saved mid-trajectory
    assert [s for s, _ in state_files(tmp_path)] == [3, 2, 1]
    eng, cb = resumable_callback(cfg, tmp_path, resume=True, every=1, keep=10, handle_signals=False)
    res = meta_train(cfg, progress=False, callback=cb, engine=eng)
    assert params_equal(res.optimizer.state_dict(), ref.optimizer.state_dict())


# -- the command line, interrupted -----------------------------------------------------------------
CONFIG = tiny(steps=225)  # 150 meta-steps of ~10 ms


def train_args(cfg_file: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(cfg_file), "--out", str(out), "--save-every", "10", "--no-progress",
            "--wandb", "disabled", *extra]


@pytest.fixture(scope="module")
def reference(one_thread, tmp_path_factory):
    """The config file, and the folder of an uninterrupted run of it (in this process)."""
    root = tmp_path_factory.mktemp("reference")
    cfg_file = root / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump(CONFIG))
    assert cli.main(train_args(cfg_file, root / "run")) == 0
    return cfg_file, root / "run"


def assert_same_run(a: Path, b: Path) -> None:
    pa = load_checkpoint(a / "checkpoint.safetensors").optimizer.state_dict()
    pb = load_checkpoint(b / "checkpoint.safetensors").optimizer.state_dict()
    assert params_equal(pa, pb)  # bitwise
    ha, hb = (json.loads((d / "history.json").read_text()) for d in (a, b))
    assert len(ha) == len(hb) == MetaTrainConfig.from_dict(CONFIG).meta_steps
    assert [h["meta_loss"] for h in ha] == [h["meta_loss"] for h in hb]


def test_sigkilled_run_resumes_to_the_uninterrupted_result_bitwise(reference, tmp_path, capsys):
    cfg_file, reference_run = reference
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "metatele", *train_args(cfg_file, out)], env=subprocess_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(out / STATE_DIR / "state-*.safetensors", proc)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "checkpoint.safetensors").exists()  # it really died mid-run
    last = state_files(out)[0][0]
    assert 10 <= last < 150
    capsys.readouterr()
    assert cli.main(train_args(cfg_file, out, "--resume")) == 0
    assert f"resuming from meta-step {last} of 150" in capsys.readouterr().err  # only later work is redone
    assert_same_run(reference_run, out)


def test_sigterm_saves_a_checkpoint_from_which_resume_continues(reference, tmp_path, monkeypatch, capsys):
    cfg_file, reference_run = reference
    out = tmp_path / "run"
    train_and_save = cli.train_and_save

    def terminated_at_meta_step_13(*args, callback, **kw):
        def cb(engine, metrics):
            if engine.meta_step_count == 13:
                os.kill(os.getpid(), signal.SIGTERM)  # a real signal, to this process
            callback(engine, metrics)

        return train_and_save(*args, callback=cb, **kw)

    monkeypatch.setattr(commands, "train_and_save", terminated_at_meta_step_13)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as e:
        cli.main(train_args(cfg_file, out))
    assert e.value.code == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "received SIGTERM" in err and "kept the training state of meta-step 13" in err and "--resume" in err
    assert [s for s, _ in state_files(out)] == [13, 10]
    assert not (out / "checkpoint.safetensors").exists()
    assert signal.getsignal(signal.SIGTERM) == handler  # the previous handler is back
    monkeypatch.undo()
    assert cli.main(train_args(cfg_file, out, "--resume")) == 0
    assert "resuming from meta-step 13 of 150" in capsys.readouterr().err
    assert_same_run(reference_run, out)


def test_total_training_time_survives_a_resume(reference, tmp_path, monkeypatch, capsys):
    """A resumed run records the time of every segment (up to the checkpoint it resumed from)."""
    import metatele.meta.train as train_mod
    from metatele.meta.engine import UnrollEngine

    cfg_file, _ = reference
    out = tmp_path / "run"
    train_and_save = cli.train_and_save

    def stopped_at_meta_step_13(*args, callback, **kw):
        def cb(engine, metrics):
            if engine.meta_step_count == 13:
                os.kill(os.getpid(), signal.SIGTERM)
            callback(engine, metrics)

        return train_and_save(*args, callback=cb, **kw)

    # a fake clock that a meta-step advances by one second (and nothing else: validation, logging
    # and checkpoints are not meta-training time)
    now = [0.0]
    monkeypatch.setattr(train_mod, "perf_counter", lambda: now[0])
    real_step = UnrollEngine.meta_step

    def one_second_step(self):
        now[0] += 1.0
        return real_step(self)

    monkeypatch.setattr(UnrollEngine, "meta_step", one_second_step)
    monkeypatch.setattr(commands, "train_and_save", stopped_at_meta_step_13)
    with pytest.raises(SystemExit):
        cli.main(train_args(cfg_file, out))
    monkeypatch.setattr(commands, "train_and_save", train_and_save)
    now[0] = 1e6  # the second process's clock reads something else entirely
    assert cli.main(train_args(cfg_file, out, "--resume")) == 0
    total = MetaTrainConfig.from_dict(CONFIG).meta_steps
    assert load_checkpoint(out / "checkpoint.safetensors").provenance["train_seconds"] == float(total)  # 13 + 137
