"""wandb logging: real wandb, offline, into a temporary folder, with the network blocked."""
from __future__ import annotations

import ipaddress
import socket
import sys

import numpy as np
import pytest
import torch

wandb = pytest.importorskip("wandb")

from metatele.storage import wandb_log as wu  # noqa: E402
from metatele.release.training import checkpoint_metadata, train_and_save  # noqa: E402
from metatele.release.checkpoint import save_checkpoint  # noqa: E402
from metatele.optimizers.learned import LearnedConfig, LearnedOptimizer  # noqa: E402
from metatele.optimizers.lstm import LSTMConfig  # noqa: E402
from metatele.tasks.family import TaskConfig  # noqa: E402
from metatele.meta.config import MetaTrainConfig  # noqa: E402
from wandb_reader import read_offline_run  # noqa: E402
from helpers import tiny  # noqa: E402


def _local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """wandb offline into tmp_path; any Python connection beyond loopback fails the test."""
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    attempts = []
    real_connect = socket.socket.connect

    def guarded_connect(self, address):
        if not _local(address):
            attempts.append(address)
            raise OSError(f"test blocked a network connection to {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    yield tmp_path / "runs"
    wandb.teardown()  # closes the run streams, so the transaction logs are complete
    assert not attempts, f"wandb tried to reach the network: {attempts}"


def finished(run):
    d = wu.run_dir(run)
    run.finish()
    wandb.teardown()
    return d


def test_mode_resolution_order(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wu.resolve_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wu.resolve_mode() == "disabled"
    assert wu.resolve_mode("offline") == "offline"
    with pytest.raises(ValueError, match="online.*offline.*disabled.*'dryrun'"):
        wu.resolve_mode("dryrun")
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="WANDB_MODE.*'sometimes'"):
        wu.resolve_mode()


def test_invalid_mode_raises_before_creating_anything(offline):
    with pytest.raises(ValueError, match="wandb mode must be one of"):
        wu.init_run(config={"a": 1}, mode="bogus", dir=offline)
    assert not offline.exists()


def test_offline_run_records_group_job_type_and_config(offline):
    config = MetaTrainConfig(task=TaskConfig(dims=[3, 4, 3, 2]), trajectories=8)
    run = wu.init_run(group="g1", job_type="train", config=config, name="first", dir=offline)
    wu.log_history(run, [
        {"step": 0, "meta_loss": torch.tensor(3.0), "lr": np.float32(0.5), "note": "skipped", "ok": True},
        {"step": 5, "meta_loss": 2.0, "lr": None},
    ])
    run.summary["best"] = 2.0
    run_dir = finished(run)
    assert run_dir.parent == offline / "wandb" and run_dir.name.startswith("offline-run-")
    assert list(run_dir.glob("run-*.wandb"))
    record = read_offline_run(run_dir)
    assert (record["group"], record["job_type"], record["name"]) == ("g1", "train", "first")
    assert record["project"] == "metatele"
    assert record["config"]["task"] == {"dims": [3, 4, 3, 2], "distribution": "uniform", "bias": False,
                                        "family": "regression", "teleport_batch": None, "minibatch": None}
    assert record["config"]["learned"]["variant"] == config.learned.variant
    steps = [(row["_step"], row.get("meta_loss"), row.get("lr"), row.get("ok")) for row in record["history"]]
    assert steps == [(0, 3.0, 0.5, 1), (5, 2.0, None, None)]
    assert "note" not in record["history"][0]
    assert record["summary"]["best"] == 2.0


def test_comparison_group_writes_one_run_per_method_and_a_summary(offline):
    steps = 4
    histories = {m: [{"loss/mean_log10": float(k + t), "time/seconds": 0.1 * t, "note": "skipped"}
                     for t in range(steps + 1)] for k, m in enumerate(["GD", "LSTM(update)", "LSTM(update+tele)"])}
    rows = [{"method": m, "final_mean_log10": h[-1]["loss/mean_log10"]} for m, h in histories.items()]
    dirs = wu.log_comparison_group("metatele", "cmp-test", histories, rows, config={"steps": steps},
                                   method_configs={"GD": {"hyperparameters": {"lr": 0.1}}}, dir=offline)
    wandb.teardown()
    assert set(dirs) == set(histories) | {"summary"}
    assert len({d for d in dirs.values()}) == 4
    assert len(list((offline / "wandb").glob("offline-run-*"))) == 4
    for method, history in histories.items():
        record = read_offline_run(dirs[method])
        assert (record["group"], record["job_type"], record["name"]) == ("cmp-test", "compare", method)
        assert record["config"]["method"] == method and record["config"]["steps"] == steps
        assert ("hyperparameters" in record["config"]) == (method == "GD")
        assert [row["_step"] for row in record["history"]] == list(range(steps + 1))
        for row, sent in zip(record["history"], history):
            assert row["loss/mean_log10"] == sent["loss/mean_log10"] and row["time/seconds"] == sent["time/seconds"]
            assert "note" not in row
        assert record["summary"]["final/loss/mean_log10"] == history[-1]["loss/mean_log10"]
    assert read_offline_run(dirs["GD"])["config"]["hyperparameters"] == {"lr": 0.1}
    summary = read_offline_run(dirs["summary"])
    assert (summary["group"], summary["job_type"]) == ("cmp-test", "compare-summary")
    assert summary["config"]["methods"] == list(histories)
    assert summary["config"]["_wandb"]["visualize"]["mean_log10_loss"]["panel_config"]["panelDefId"] == "wandb/lineseries/v0"
    assert summary["summary"]["summary"]["_type"] == "table-file"
    assert summary["summary"]["summary"]["nrows"] == len(rows)


def test_checkpoint_artifact_is_logged_as_a_model(offline, tmp_path):
    config = MetaTrainConfig(task=TaskConfig(dims=[3, 4, 3, 2]),
                             learned=LearnedConfig(lstm=LSTMConfig(hidden=16)), trajectories=8)
    path = save_checkpoint(tmp_path / "opt.safetensors", LearnedOptimizer(config.task, config.learned), config)
    run = wu.init_run(job_type="train", config=config, dir=offline)
    artifact = wu.log_checkpoint_artifact(run, path, "lstm-update-tele", {**checkpoint_metadata(path), "mean_loss": 1.5})
    assert artifact.type == "model"
    record = read_offline_run(finished(run))
    models = [a for a in record["artifacts"] if a["type"] == "model"]
    assert [a["name"] for a in models] == ["lstm-update-tele"]
    meta = models[0]["metadata"]
    assert meta["mean_loss"] == 1.5 and meta["variant"] == "update+tele" and meta["dims"] == [3, 4, 3, 2]
    assert meta["training_seeds"] == [[0, 8]] and meta["checkpoint"] == str(path) and len(meta["payload_sha256"]) == 64


def test_disabled_mode_writes_nothing(offline, monkeypatch):
    run = wu.init_run(config={"a": 1}, mode="disabled", dir=offline)
    run.log({"x": 1.0})
    wu.log_history(run, [{"step": 0, "x": 2.0}])
    assert wu.run_dir(run) is None
    run.finish()
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the environment alone also disables
    dirs = wu.log_comparison_group("metatele", "g", {"GD": [{"loss/mean_log10": 0.0}]}, [{"method": "GD"}], dir=offline)
    assert dirs == {"GD": None, "summary": None}
    assert not offline.exists() or not any(offline.rglob("*"))


def test_empty_wandb_mode_variable_means_the_offline_default(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "")
    assert wu.resolve_mode() == "offline"
    assert "WANDB_MODE" not in wu.os.environ


def test_a_disabled_run_needs_no_wandb(tmp_path, monkeypatch):
    """``--wandb disabled`` works where wandb is not installed (a GPU machine's image, say): the
    whole training command, from config to checkpoint, never imports it."""
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now fails
    with pytest.raises(ImportError):
        __import__("wandb")
    config = MetaTrainConfig.from_dict(tiny(**{"max_meta_steps": 2}))
    result, ckpt = train_and_save(config, tmp_path / "run", wandb_mode="disabled", progress=False)
    assert ckpt.exists() and result.meta_steps == 2
    assert not (tmp_path / "run" / "wandb").exists()
    dirs = wu.log_comparison_group("metatele", "g", {"GD": [{"loss/mean_log10": 0.0}]}, [{"method": "GD"}],
                                   mode="disabled", dir=tmp_path)
    assert dirs == {"GD": None, "summary": None}
