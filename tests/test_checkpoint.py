"""Checkpoints: safetensors + JSON, atomic writes, clear errors, never unpickle."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load, save

import metatele
from metatele.release import checkpoint as ck
from metatele.release.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_optimizer,
    read_metadata,
    save_checkpoint,
    seed_ranges,
)
from metatele.release.manifest import verify_manifest, write_manifest
from metatele.storage.container import file_sha256, payload_sha256
from metatele.storage.provenance import git_commit
from metatele.optimizers.learned import LearnedConfig, LearnedOptimizer
from metatele.optimizers.lstm import LSTMConfig
from metatele.tasks.family import TEST_SEED_OFFSET, TaskConfig
from metatele.meta.config import MetaTrainConfig


def small_config(dims=(3, 4, 3, 2), variant="update+tele", **kw) -> MetaTrainConfig:
    return MetaTrainConfig(
        task=TaskConfig(dims=list(dims)),
        learned=LearnedConfig(variant=variant, lstm=LSTMConfig(hidden=16)),
        trajectories=8,
        **kw,
    )


def build(config: MetaTrainConfig) -> LearnedOptimizer:
    torch.manual_seed(0)
    return LearnedOptimizer(config.task, config.learned)


@pytest.fixture
def saved(tmp_path):
    config = small_config()
    opt = build(config)
    path = save_checkpoint(tmp_path / "opt.safetensors", opt, config, provenance={"meta_steps": 3})
    return path, opt, config


def test_round_trip_restores_parameters_config_and_provenance(tmp_path):
    config = small_config(train_seed_start=100)
    opt = build(config)
    evaluation = {"final_loss": torch.tensor([1.5, float("inf")]), "median": np.float64(2.0), "steps": 10}
    path = save_checkpoint(tmp_path / "sub" / "opt.safetensors", opt, config,
                           provenance={"meta_steps": 7, "note": "unit test"}, evaluation=evaluation)
    loaded = load_checkpoint(path)
    assert loaded.config == config
    saved_sd, loaded_sd = opt.state_dict(), loaded.optimizer.state_dict()
    assert saved_sd.keys() == loaded_sd.keys()
    for k in saved_sd:
        assert torch.equal(saved_sd[k], loaded_sd[k]), k
    prov = loaded.provenance
    assert prov["training_seeds"] == [[100, 108]]
    assert loaded.training_seeds == [range(100, 108)]
    assert prov["meta_steps"] == 7 and prov["note"] == "unit test" and prov["meta_seed"] == config.seed
    assert prov["metatele_version"] == metatele.__version__
    assert prov["torch_version"] == torch.__version__
    assert prov["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40,64}", prov["git_commit"])
    assert re.match(r"\d{4}-\d\d-\d\dT", prov["created"])
    assert loaded.evaluation == {"final_loss": [1.5, float("inf")], "median": 2.0, "steps": 10}
    assert loaded.manifest["format_version"] == ck.FORMAT_VERSION
    assert read_metadata(path)["payload_sha256"] == loaded.manifest["payload_sha256"]


def test_loaded_optimizer_keeps_dtype_and_explicit_training_seeds(tmp_path):
    config = small_config(variant="update", dtype="float64")
    opt = build(config).double()
    path = save_checkpoint(tmp_path / "opt.safetensors", opt, config, provenance={"training_seeds": [5, 6, 7, 9]})
    loaded = load_optimizer(path, device="cpu")
    assert next(loaded.parameters()).dtype == torch.float64
    assert load_checkpoint(path).provenance["training_seeds"] == [[5, 8], [9, 10]]


def test_seed_ranges_merge_without_expanding():
    assert seed_ranges(range(0, 700)) == [[0, 700]]
    assert seed_ranges((0, 700)) == [[0, 700]]  # a (start, end) tuple, as the engine reports it
    assert seed_ranges([0, 700]) == [[0, 1], [700, 701]]  # a list holds seeds
    assert seed_ranges([3, 1, 2, 7]) == [[1, 4], [7, 8]]
    assert seed_ranges([[0, 10], [5, 20], [30, 40]]) == [[0, 20], [30, 40]]
    assert seed_ranges(range(0, TEST_SEED_OFFSET)) == [[0, TEST_SEED_OFFSET]]


def test_save_refuses_test_seeds_and_mismatched_config(tmp_path):
    config = small_config()
    opt = build(config)
    with pytest.raises(CheckpointError, match="test split"):
        save_checkpoint(tmp_path / "a.safetensors", opt, config, provenance={"training_seeds": [TEST_SEED_OFFSET + 1]})
    other = small_config(dims=(3, 4, 5, 2))
    with pytest.raises(CheckpointError, match=r"\[3, 4, 3, 2\].*\[3, 4, 5, 2\]"):
        save_checkpoint(tmp_path / "b.safetensors", opt, other)
    with pytest.raises(CheckpointError, match="config.learned"):
        save_checkpoint(tmp_path / "c.safetensors", opt, small_config(variant="update"))
    assert not any(tmp_path.iterdir())


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch, saved):
    path, opt, config = saved
    before = path.read_bytes()
    changed = build(config)
    with torch.no_grad():
        for p in changed.parameters():
            p.add_(1.0)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    for target in ("replace", "fsync"):
        with monkeypatch.context() as m:
            m.setattr(os, target, boom)
            with pytest.raises(OSError, match="disk full"):
                save_checkpoint(path, changed, config)
        assert path.read_bytes() == before
        assert sorted(p.name for p in path.parent.iterdir()) == ["opt.safetensors"]  # no temp file left
    for k, v in load_optimizer(path).state_dict().items():
        assert torch.equal(v, opt.state_dict()[k])
    save_checkpoint(path, changed, config)  # and a successful overwrite replaces it
    assert not torch.equal(next(load_optimizer(path).parameters()), next(opt.parameters()))


def test_missing_path_and_directory_raise(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="directory"):
        load_checkpoint(tmp_path)


def test_truncated_file_raises(tmp_path, saved):
    path = saved[0]
    data = path.read_bytes()
    header = int.from_bytes(data[:8], "little")
    for n in (0, 5, 8, 8 + header // 2, 8 + header, len(data) - 1):
        bad = tmp_path / f"cut{n}.safetensors"
        bad.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match="truncated|not a safetensors|corrupted"):
            load_checkpoint(bad)


def test_corrupted_bytes_raise_everywhere_in_the_file(tmp_path, saved):
    path = saved[0]
    data = path.read_bytes()
    header = int.from_bytes(data[:8], "little")
    rng = np.random.default_rng(0)
    positions = sorted({0, 3, 8, 9, 8 + header - 1, 8 + header, len(data) - 1}
                       | set(rng.integers(0, len(data), 60).tolist()))
    bad = tmp_path / "bad.safetensors"
    for i in positions:
        for flip in (0x01, 0xFF):
            corrupted = bytearray(data)
            corrupted[i] ^= flip
            bad.write_bytes(bytes(corrupted))
            with pytest.raises(CheckpointError):
                load_checkpoint(bad)
    corrupted = bytearray(data)
    corrupted[-3] ^= 0x10  # inside the tensor data: the payload hash catches it
    bad.write_bytes(bytes(corrupted))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(bad)


def _rewrite(path: Path, out: Path, edit_doc=None, edit_tensors=None) -> Path:
    """Re-encode a checkpoint with an edited document/tensors and consistent hashes."""
    data = path.read_bytes()
    doc = read_metadata(path)
    tensors = load(data)
    if edit_tensors:
        edit_tensors(tensors)
    doc["payload_sha256"] = payload_sha256(tensors)
    if edit_doc:
        edit_doc(doc)
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))  # the container's layout, by hand
    metadata = {"format": ck.FORMAT, "metatele": text, "metatele_sha256": hashlib.sha256(text.encode()).hexdigest()}
    out.write_bytes(save(tensors, metadata=metadata))
    return out


def test_unknown_format_version_raises(tmp_path, saved):
    bad = _rewrite(saved[0], tmp_path / "v999.safetensors", edit_doc=lambda d: d.update(format_version=999))
    with pytest.raises(CheckpointError, match="format version 999.*reads version 1"):
        load_checkpoint(bad)


def test_missing_unexpected_and_misshapen_tensors_raise(tmp_path, saved):
    path = saved[0]
    key = sorted(saved[1].state_dict())[0]
    missing = _rewrite(path, tmp_path / "m.safetensors", edit_tensors=lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match=rf"missing tensors \['{re.escape(key)}'\]"):
        load_checkpoint(missing)
    extra = _rewrite(path, tmp_path / "e.safetensors", edit_tensors=lambda t: t.update(stray=torch.zeros(2)))
    with pytest.raises(CheckpointError, match=r"unexpected tensors \['stray'\]"):
        load_checkpoint(extra)

    def reshape(t):
        t[key] = torch.zeros(t[key].numel() + 1)

    wrong = _rewrite(path, tmp_path / "w.safetensors", edit_tensors=reshape)
    with pytest.raises(CheckpointError, match=rf"wrong tensor shapes: {re.escape(key)}"):
        load_checkpoint(wrong)
    bad_config = _rewrite(path, tmp_path / "c.safetensors", edit_doc=lambda d: d["config"].update(stpes=3))
    with pytest.raises(CheckpointError, match="invalid config.*stpes"):
        load_checkpoint(bad_config)


@pytest.mark.parametrize("dtype", [torch.float16, torch.int64])
def test_a_tensor_of_another_dtype_is_refused_not_cast(tmp_path, saved, dtype):
    path = saved[0]
    key = sorted(saved[1].state_dict())[0]

    def cast(t):
        t[key] = t[key].to(dtype)

    bad = _rewrite(path, tmp_path / "d.safetensors", edit_tensors=cast)
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(CheckpointError, match=rf"wrong dtype \({re.escape(key)}: {name}\).*never cast on load"):
        load_checkpoint(bad)
    mixed = _rewrite(path, tmp_path / "m.safetensors", edit_tensors=lambda t: t.update({key: t[key].double()}))
    with pytest.raises(CheckpointError, match="wrong dtype \\(mixed float32, float64\\)"):
        load_checkpoint(mixed)


def test_non_finite_meta_parameters_are_never_saved_as_a_checkpoint(tmp_path):
    config = small_config()
    opt = build(config)
    with torch.no_grad():
        next(opt.parameters())[0].fill_(float("nan"))
    with pytest.raises(CheckpointError, match="not saving .* are not finite"):
        save_checkpoint(tmp_path / "opt.safetensors", opt, config)
    assert not list(tmp_path.iterdir())


def test_incompatible_task_names_both_dims(tmp_path):
    config = small_config(dims=(20, 20, 20, 20))
    path = save_checkpoint(tmp_path / "ref.safetensors", build(config), config)
    with pytest.raises(CheckpointError) as err:
        load_optimizer(path, task=TaskConfig(dims=[10, 30, 30, 10]))
    assert "[20, 20, 20, 20]" in str(err.value) and "[10, 30, 30, 10]" in str(err.value)
    # same weight shapes, other sample count and distribution: allowed
    opt = load_optimizer(path, task=TaskConfig(dims=[5, 20, 20, 20], distribution="gaussian"))
    assert opt.task.dims == [20, 20, 20, 20]


class _Payload:
    """Unpickling this would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickles_are_refused_without_being_run(tmp_path):
    marker = tmp_path / "PWNED"
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(pickle.dumps(_Payload(marker)))
    archive = tmp_path / "archive.pt"
    torch.save({"state": _Payload(marker)}, archive)
    assert not marker.exists()
    for path in (plain, archive):
        with pytest.raises(CheckpointError, match="never unpickles"):
            load_checkpoint(path)
        assert not marker.exists()
    old_protocol = tmp_path / "p0.safetensors"  # protocol 0 has no 0x80 opcode
    old_protocol.write_bytes(pickle.dumps(_Payload(marker), protocol=0))
    with pytest.raises(CheckpointError):
        load_checkpoint(old_protocol)
    assert not marker.exists()


def test_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a metatele checkpoint"):
        load_checkpoint(path)
    # a header length of 0x480 starts the file with the bytes of a pickle opcode (0x80 0x04):
    # the safetensors structure is recognised first, so it is not mistaken for a pickle
    for pad in range(1000, 1160):
        save_file({"w": torch.zeros(2)}, path, metadata={"pad": "x" * pad})
        if path.read_bytes()[:2] == b"\x80\x04":
            break
    assert path.read_bytes()[:2] == b"\x80\x04"
    with pytest.raises(CheckpointError, match="not a metatele checkpoint"):
        load_checkpoint(path)


def test_loading_does_not_consume_the_global_random_stream(saved):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_optimizer(saved[0])
    assert torch.equal(torch.rand(3), expected)


def test_git_commit_is_none_outside_a_repository(tmp_path):
    assert git_commit(tmp_path) is None
    assert git_commit(tmp_path / "does-not-exist") is None


def test_manifest_records_files_and_detects_changes(tmp_path, saved):
    path, _, config = saved
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    manifest = write_manifest(
        tmp_path, [path, notes], config=config,
        seeds={"train": range(0, 8), "test": range(TEST_SEED_OFFSET, TEST_SEED_OFFSET + 4)},
        metrics={"mean_loss": np.float32(1.25), "curve": torch.tensor([3.0, 2.0])},
    )
    assert manifest == tmp_path / "MANIFEST.json"
    doc = json.loads(manifest.read_text())
    assert doc["config"] == config.to_dict()
    assert doc["seeds"]["test"] == [[TEST_SEED_OFFSET, TEST_SEED_OFFSET + 4]]
    assert doc["metrics"] == {"mean_loss": 1.25, "curve": [3.0, 2.0]}
    entries = {e["path"]: e for e in doc["files"]}
    assert set(entries) == {"opt.safetensors", "notes.txt"}
    assert entries["notes.txt"]["sha256"] == file_sha256(notes) and "checkpoint" not in entries["notes.txt"]
    assert entries["opt.safetensors"]["checkpoint"]["training_seeds"] == [[0, 8]]
    assert verify_manifest(tmp_path)["files"] == doc["files"]
    notes.write_text("changed")
    with pytest.raises(CheckpointError, match="notes.txt: sha256 differs"):
        verify_manifest(manifest)
    os.remove(notes)
    with pytest.raises(CheckpointError, match="notes.txt: missing"):
        verify_manifest(manifest)


def _cw_config() -> MetaTrainConfig:
    from metatele.optimizers.coordinatewise import CoordinatewiseConfig
    return MetaTrainConfig(task=TaskConfig(dims=[3, 4, 3, 2]), trajectories=8,
                           learned=LearnedConfig(variant="update+tele", arch="coordinatewise",
                                                 coordinatewise=CoordinatewiseConfig(hidden=8)))


def test_redeploy_changes_only_the_safeguards_and_records_what_it_was_trained_with(tmp_path):
    config = _cw_config()
    src = save_checkpoint(tmp_path / "cw.safetensors", build(config), config, provenance={"meta_steps": 7})
    dst = ck.redeploy(src, tmp_path / "deployed.safetensors", {"update_safeguard": True, "update_backoff": 0.5},
                      why="a test")
    a, b = load_checkpoint(src), load_checkpoint(dst)
    for k, v in a.optimizer.state_dict().items():
        assert torch.equal(v, b.optimizer.state_dict()[k]), k
    cw_a, cw_b = a.config.learned.coordinatewise, b.config.learned.coordinatewise
    assert (cw_b.update_safeguard, cw_b.update_backoff) == (True, 0.5)
    assert (cw_a.update_safeguard, cw_a.update_backoff) == (False, None)
    changed = {k for k, v in a.config.to_dict()["learned"]["coordinatewise"].items()
               if b.config.to_dict()["learned"]["coordinatewise"][k] != v}
    assert changed == {"update_safeguard", "update_backoff"}
    assert {k: v for k, v in a.config.to_dict().items() if k != "learned"} == \
        {k: v for k, v in b.config.to_dict().items() if k != "learned"}
    dep = b.provenance["deployment"]
    assert dep["as_trained"]["update_safeguard"] is False and dep["deployed"]["update_backoff"] == 0.5
    assert dep["why"] == "a test" and b.provenance["meta_steps"] == 7
    # redeploying again keeps what it was first trained with
    again = load_checkpoint(ck.redeploy(dst, tmp_path / "again.safetensors", {"update_regrow": 1.2}, why="twice"))
    assert again.provenance["deployment"]["as_trained"] == dep["as_trained"]
    assert again.config.learned.coordinatewise.update_regrow == 1.2


def test_redeploy_refuses_other_settings_invalid_ones_and_non_coordinatewise_checkpoints(tmp_path, saved):
    config = _cw_config()
    src = save_checkpoint(tmp_path / "cw.safetensors", build(config), config)
    with pytest.raises(CheckpointError, match=r"\['hidden'\]: not deployment settings"):
        ck.redeploy(src, tmp_path / "x.safetensors", {"hidden": 16}, why="")
    with pytest.raises(CheckpointError, match="it needs update_safeguard: true"):
        ck.redeploy(src, tmp_path / "x.safetensors", {"update_backoff": 0.5}, why="")
    with pytest.raises(CheckpointError, match="only a coordinatewise optimizer"):
        ck.redeploy(saved[0], tmp_path / "x.safetensors", {"update_safeguard": True}, why="")
    assert not (tmp_path / "x.safetensors").exists()
