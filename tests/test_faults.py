"""Faults and bad input: rejected configs, unwritable folders, writes failing midway, NaN storms,
and a rank dying in a distributed run. Each test fails if the behaviour regresses."""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import metatele.storage.container as container_mod
import metatele.meta.checkpointer as checkpointer_mod
import metatele.storage.output as output_mod
from metatele import cli
from metatele.release.checkpoint import load_checkpoint
from metatele.meta.engine import DivergenceError, UnrollEngine
from metatele.meta.checkpointer import TrainingCheckpointer, resumable_callback
from metatele.meta.state import STATE_DIR, ResumeError, latest_state, state_files
from metatele.meta.train import meta_train
from metatele.meta.config import MetaTrainConfig

from helpers import subprocess_env, tiny

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]






# -- bad configs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("override,names", [
    ("lr_updte=0.01", ["unknown config key 'lr_updte'", "did you mean 'lr_update'", "allowed keys"]),
    ("learned.lstm.hiden=8", ["unknown config key", "hiden", "hidden"]),
    ("unroll=-3", ["unroll", "positive integer", "-3"]),
    ("learned.teleport.eps=0", ["eps", "must be > 0"]),
    ("learned.teleport.eps=-0.5", ["eps", "must be > 0"]),
    ("task.dims=[6,6]", ["task.dims", "at least 3 entries"]),
    ("dtype=float16", ["dtype", "float32", "float64"]),
])
def test_bad_config_is_rejected_by_the_cli_before_any_compute(override, names, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["train", "--out", str(out), "--set", override, "--no-progress", "--wandb", "disabled"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("metatele train: error:")
    for name in names:
        assert name in err, err
    assert not out.exists()  # nothing was computed or written


def test_bad_yaml_key_is_rejected_by_the_metatele_train_process(tmp_path):
    cfg = tiny()
    cfg["learned"]["teleport"]["epsilon"] = 0.01
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "metatele", "train", "--config", str(tmp_path / "bad.yaml"),
                           "--out", str(tmp_path / "out")], env=subprocess_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "unknown config key 'learned.teleport.epsilon'" in proc.stderr and "eps" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag,value", [("--save-every", "0"), ("--keep", "0")])
def test_bad_checkpoint_options_are_rejected(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # by the argument parser, before anything is read or written
        cli.main(["train", "--out", str(tmp_path / "out"), "--set", "trajectories=4", flag, value, "--wandb", "disabled"])
    assert e.value.code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# -- unwritable folders and failing writes ---------------------------------------------------------
def test_unwritable_output_folder_fails_before_training(tmp_path, monkeypatch, capsys):
    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(output_mod.tempfile, "mkstemp", refuse)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny()))
    rc = cli.main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out"),
                   "--no-progress", "--wandb", "disabled"])
    err = capsys.readouterr().err
    assert rc == 2 and "not writable" in err and "Permission denied" in err
    assert not (tmp_path / "out" / "checkpoint.safetensors").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_output_folder_is_reported(tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        with pytest.raises(ResumeError, match="not writable"):
            resumable_callback(MetaTrainConfig.from_dict(tiny()), out, handle_signals=False)
    finally:
        out.chmod(0o700)


def test_a_write_failing_midway_keeps_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    cfg = MetaTrainConfig.from_dict(tiny(trajectories=40))
    cb = TrainingCheckpointer(cfg, tmp_path, every=2, keep=3, handle_signals=False)
    eng = UnrollEngine(cfg)
    for _ in range(2):
        cb(eng, eng.meta_step())
    good = (tmp_path / STATE_DIR / "state-00000002.safetensors").read_bytes()
    written = []

    class DiskFull:  # writes part of the bytes, then the disk is full
        def __init__(self, path, mode):
            self.f = open(path, mode)

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            written.append(len(data) // 2)
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(container_mod, "open", DiskFull, raising=False)
    cb(eng, eng.meta_step())
    with pytest.raises(ResumeError, match=r"No space left on device.*previous checkpoint \(meta-step 2\) is intact"):
        cb(eng, eng.meta_step())
    assert written and written[0] > 0
    monkeypatch.undo()
    assert [s for s, _ in state_files(tmp_path)] == [2]
    assert (tmp_path / STATE_DIR / "state-00000002.safetensors").read_bytes() == good
    assert not list((tmp_path / STATE_DIR).glob(".*tmp"))  # no half-written file left behind
    path, _, doc, _ = latest_state(tmp_path)
    assert doc["meta_step"] == 2


# -- NaN storms ------------------------------------------------------------------------------------
def test_nan_storm_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    cfg = MetaTrainConfig.from_dict(tiny(trajectories=1000, diverge_patience=3))
    original = UnrollEngine.compute_meta_gradient

    def storm(self):  # from meta-step 5 on, every trajectory's weights are NaN
        if self.meta_step_count >= 4:
            for w in self.trajectories.W:
                w.fill_(float("nan"))
        return original(self)

    monkeypatch.setattr(UnrollEngine, "compute_meta_gradient", storm)
    cb = TrainingCheckpointer(cfg, tmp_path, every=1, keep=10, handle_signals=False)
    with pytest.raises(DivergenceError, match="every one of the 4 trajectories diverged .* 3 consecutive meta-steps"):
        meta_train(cfg, progress=False, callback=cb)
    assert [s for s, _ in state_files(tmp_path)] == [4, 3, 2, 1]  # nothing saved during the storm
    assert "not saving the training state at meta-step 5" in capsys.readouterr().err
    engine, cb2 = resumable_callback(cfg, tmp_path, resume=True, handle_signals=False)
    assert engine.meta_step_count == 4 and engine.all_dead_streak == 0
    assert all(torch.isfinite(p).all() for p in engine.meta_parameters)
    assert all(torch.isfinite(w).all() for w in engine.trajectories.W)


def test_non_finite_meta_parameters_are_never_saved(tmp_path):
    cfg = MetaTrainConfig.from_dict(tiny(trajectories=40))
    eng = UnrollEngine(cfg)
    cb = TrainingCheckpointer(cfg, tmp_path, every=1, handle_signals=False)
    cb(eng, eng.meta_step())
    with torch.no_grad():
        eng.meta_parameters[0][0, 0] = float("inf")
    assert cb.save(eng) is None
    for st in eng.meta_opt.state.values():  # nor a non-finite Adam moment
        st["exp_avg_sq"].fill_(float("nan"))
        break
    with torch.no_grad():
        eng.meta_parameters[0][0, 0] = 0.0
    assert cb.save(eng) is None
    path, _, doc, state = latest_state(tmp_path)
    assert doc["meta_step"] == 1
    assert all(torch.isfinite(t).all() for t in state["shared"]["optimizer"].values())


# -- a rank dying ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_ranks(cfg_file: Path, out: Path, *extra: str, timeout: int = 20) -> list[subprocess.Popen]:
    """Two ranks of experiments/train_distributed.py with torchrun's environment variables."""
    port = free_port()
    procs = []
    for r in range(2):
        e = {**subprocess_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(r),
             "WORLD_SIZE": "2", "LOCAL_RANK": str(r)}
        procs.append(subprocess.Popen(
            [sys.executable, "experiments/train_distributed.py", "--config", str(cfg_file), "--out", str(out),
             "--save-every", "10", "--no-progress", "--wandb", "disabled", "--timeout", str(timeout), *extra],
            env=e, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def test_a_dead_rank_makes_the_other_fail_promptly_and_torchrun_resumes_the_run(tmp_path):
    cfg = tiny(steps=90)  # 60 meta-steps
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    procs = launch_ranks(cfg_file, out)
    t0 = time.time()
    while not state_files(out):
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        assert time.time() - t0 < 60
        time.sleep(0.01)
    procs[1].send_signal(signal.SIGKILL)
    t_kill = time.time()
    _, err = procs[0].communicate(timeout=60)
    waited = time.time() - t_kill
    procs[1].communicate()
    assert procs[0].returncode == 1, err
    assert waited < 15, waited  # well inside the 20 s timeout: it did not hang
    assert "rank 0 of 2" in err and "another rank died or did not answer" in err and "--resume" in err
    last = state_files(out)[0][0]
    assert not (out / "checkpoint.safetensors").exists()

    # the same command under torchrun, with --resume
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "experiments/train_distributed.py", "--config", str(cfg_file), "--out", str(out), "--resume",
         "--save-every", "10", "--keep", "2", "--no-progress", "--wandb", "disabled", "--timeout", "30"],
        env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert f"resuming from meta-step {last} of 60" in proc.stderr
    # rank 0 alone wrote: the final files, and the last two training states
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.safetensors", "config.json", "history.json",
                                                     STATE_DIR]
    assert [s for s, _ in state_files(out)] == [60, 50]
    history = json.loads((out / "history.json").read_text())
    assert [h["meta_step"] for h in history] == list(range(1, 61))  # the history before the crash too
    # the resumed two-rank run ends where one process with the whole batch ends (up to rounding,
    # amplified over 60 meta-steps to ~1e-6; a resume that lost the Adam state or the
    # trajectories would be ~1e-1 away), and records both ranks' seeds
    single = meta_train(MetaTrainConfig.from_dict(cfg), progress=False)
    ckpt = load_checkpoint(out / "checkpoint.safetensors")
    assert ckpt.provenance["training_seeds"] == [list(single.train_seeds)]
    want, got = (torch.cat([p.detach().reshape(-1) for p in m.parameters()])
                 for m in (single.optimizer, ckpt.optimizer))
    assert ((got - want).norm() / want.norm()).item() < 1e-4


def test_a_hung_rank_makes_the_other_fail_after_the_timeout(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(tiny(steps=3000)))
    out = tmp_path / "run"
    procs = launch_ranks(cfg_file, out, timeout=4)
    try:
        t0 = time.time()
        while not state_files(out):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.time() - t0 < 60
            time.sleep(0.01)
        procs[1].send_signal(signal.SIGSTOP)  # alive, connected, silent
        t_stop = time.time()
        _, err = procs[0].communicate(timeout=60)
        waited = time.time() - t_stop
    finally:
        procs[1].kill()
        procs[1].communicate()
    assert procs[0].returncode == 1, err
    assert 3 < waited < 20, waited
    assert "did not answer within the 4 s timeout" in err and "--resume" in err


# -- the train command under faults: two runs into one folder, a run that learns nothing, a finished
# -- checkpoint, Ctrl-C twice ---------------------------------------------------------------------
def train_process(cfg: dict, out: Path, tmp_path: Path, *extra: str) -> subprocess.Popen:
    """``metatele train`` on ``cfg`` in a process of its own, once it holds the lock on ``out``."""
    cfg_file = tmp_path / f"{out.name}.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "metatele", "train", "--config", str(cfg_file), "--out", str(out),
                             "--no-progress", "--wandb", "disabled", *extra], env=subprocess_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (out / ".metatele.lock").exists() or str(proc.pid) not in (out / ".metatele.lock").read_text():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < 60
        time.sleep(0.02)
    return proc


def test_two_runs_into_one_folder_exactly_one_refuses_and_ctrl_c_twice_exits_130_cleanly(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tiny(trajectories=100_000, batch_size=20, unroll=10, steps=100,
               **{"task.dims": [20, 20, 20, 20], "learned.lstm.hidden": 300})  # meta-steps of a good fraction of a second
    first = train_process(cfg, out, tmp_path, "--save-every", "1")
    try:
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny()))
        for extra in ([], ["--resume"]):  # a fresh run and a resume both refuse at once
            rc = cli.main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(out), "--seed", "2",
                           "--no-progress", "--wandb", "disabled", *extra])
            err = capsys.readouterr().err
            assert rc == 2 and f"is in use by another run (pid {first.pid}, `metatele train`" in err, err
        while not state_files(out):  # training, with the signal handlers in place
            assert first.poll() is None
            time.sleep(0.02)
        first.send_signal(signal.SIGINT)
        lines = []
        while not lines or "received SIGINT" not in lines[-1]:
            lines.append(first.stderr.readline())
        first.send_signal(signal.SIGINT)  # the documented abort, during the meta-step the first one lets finish
        _, err = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.rstrip().endswith("metatele train: interrupted"), err
    assert not (out / ".metatele.lock").exists()
    doc = latest_state(out)[2]
    assert doc["config"]["seed"] == 0 and doc["config"]["batch_size"] == 20  # the first run's state only


def test_non_finite_meta_gradients_fail_the_train_command_and_save_no_nan(tmp_path, monkeypatch, capsys):
    original = UnrollEngine.compute_meta_gradient

    def nan_gradient(self):
        u = original(self)
        if self.meta_step_count >= 1:  # from the second meta-step on
            for p in self.meta_parameters:
                p.grad.fill_(float("nan"))
        return u

    monkeypatch.setattr(UnrollEngine, "compute_meta_gradient", nan_gradient)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny(trajectories=40)))  # 20 meta-steps planned
    out = tmp_path / "run"
    rc = cli.main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(out), "--save-every", "2",
                   "--no-progress", "--wandb", "disabled"])
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "metatele train: error: meta-training failed after 12 of 20 meta-steps: 11 of its 12 meta-steps were " \
           "skipped" in err and "no checkpoint written" in err
    assert not (out / "checkpoint.safetensors").exists() and not (out / ".metatele.lock").exists()
    text = (out / "history.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    history = json.loads(text)
    assert [h["skipped"] for h in history] == [False] + [True] * 11
    assert history[-1]["skipped_total"] == 11 and history[-1]["meta_grad_norm"] is None
    for _, path in state_files(out):  # every training state saved holds finite meta-parameters
        doc, state = checkpointer_mod.decode(path.read_bytes())
        assert all(torch.isfinite(t).all() for t in state["shared"]["optimizer"].values())


def test_a_finished_checkpoint_is_not_overwritten_without_overwrite(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny()))
    out = tmp_path / "run"
    argv = ["train", "--config", str(tmp_path / "c.yaml"), "--out", str(out), "--no-progress", "--wandb", "disabled"]
    assert cli.main(argv) == 0
    first = (out / "checkpoint.safetensors").read_bytes()
    for p in (out / STATE_DIR).iterdir():  # the user deletes the training states (3 × 53 MB in a real run)
        p.unlink()
    for extra in ([], ["--resume"], ["--seed", "3"]):
        assert cli.main(argv + extra) == 2
        assert "already holds a finished run's checkpoint; pass --overwrite" in capsys.readouterr().err
        assert (out / "checkpoint.safetensors").read_bytes() == first
    assert cli.main(argv + ["--seed", "3", "--overwrite"]) == 0
    assert load_checkpoint(out / "checkpoint.safetensors").config.seed == 3


def test_an_empty_out_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.safetensors").write_bytes(b"not read: the parser refuses first")
    for argv in (["train", "--out", ""], ["eval", "x.safetensors", "--out", " "]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2 and "--out: an empty path; name an output folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]


def test_history_and_config_are_written_atomically(tmp_path, monkeypatch):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny()))
    out = tmp_path / "run"
    argv = ["train", "--config", str(tmp_path / "c.yaml"), "--out", str(out), "--no-progress", "--wandb", "disabled"]
    assert cli.main(argv) == 0
    before = {n: (out / n).read_bytes() for n in ("history.json", "config.json")}
    real_open = open

    def disk_full(path, mode="r", *a, **k):  # the disk fills while the new history is written
        f = real_open(path, mode, *a, **k)
        if "history.json" in str(path) and "w" in mode:
            f.write(b"[{")
            f.close()
            raise OSError(errno.ENOSPC, "No space left on device")
        return f

    monkeypatch.setattr(container_mod, "open", disk_full, raising=False)
    with pytest.raises(OSError, match="No space left"):
        cli.main(argv + ["--resume", "--overwrite"])  # the finished run again: its files rewritten
    assert {n: (out / n).read_bytes() for n in before} == before  # the old files, whole
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
