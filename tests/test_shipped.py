"""Every shipped learned optimizer loads and reproduces a number of its manifest.

Shipped means the files of ``checkpoints/`` and the optimizers packaged in ``metatele/pretrained``
(loadable by name after a plain install). Each manifest's ``check`` is the manifest's own
measurement at step 10 on the seeds it was made on (``experiments/ship_pretrained.py`` refuses to
write a check that does not reproduce it), so rerunning it here reproduces a published number.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import metatele as mt
from metatele.meta.config import MetaTrainConfig
from metatele.release.checkpoint import CheckpointError, load_checkpoint, read_metadata
from metatele.release.manifest import manifest_path, rerun_check, verify_manifest
from metatele.release.pretrained import REGISTRY, describe, pretrained_dir, pretrained_path, resolve_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "checkpoints"
#: the digits study's update+tele checkpoint as committed in 215216a (written by the code of
#: 7634429), before its m1 and m2 changed (commits fa08d95, e4b4ed1 and 6f09dc7): the code no
#: longer builds its architecture
OLD_ARCHITECTURE = Path(__file__).parent / "data" / "old_architecture.safetensors"
DIGITS_MADE_BY = "written by metatele 0.1.0 (git 76344299303b)"


def shipped_files() -> list[Path]:
    """Every shipped optimizer with its own manifest: the packaged ones, then checkpoints/ (a file
    that is a byte-copy of a packaged one is checked once)."""
    packaged = [pretrained_path(n) for n in REGISTRY]
    copies = {p.read_bytes() for p in packaged}
    own = [p for p in sorted(CHECKPOINTS.glob("*.safetensors")) if not p.name.startswith("digits_")]
    return packaged + [p for p in own if p.read_bytes() not in copies]


@pytest.mark.parametrize("path", shipped_files(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_a_shipped_optimizer_loads_and_reproduces_its_manifest_number(path):
    doc = verify_manifest(manifest_path(path))
    load_checkpoint(path)
    check, head = doc["check"], doc["headline"]
    assert check["steps"] == 10 and check["mean_log10_loss"] == head["mean_log10_loss_at"]["10"]  # a published number
    assert rerun_check(path, check) == pytest.approx(check["mean_log10_loss"], abs=1e-6)


BUILT = [pretrained_path(n) for n in REGISTRY] + sorted(CHECKPOINTS.glob("*.safetensors"))


@pytest.mark.parametrize("path", BUILT, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_shipped_file_loads_with_a_config_of_options_that_apply(path):
    # files written before options were checked for applying to the run hold some that it never read
    # (benchmark_adam_cw_tele_*: m1's coordinatewise.lr; digits_update*: m2's tele_norm_init): they are dropped
    config = MetaTrainConfig.from_saved(read_metadata(path)["config"])
    assert MetaTrainConfig.from_dict(config.to_dict()) == config  # every option left applies: none is refused
    assert load_checkpoint(path).config == config


def test_every_checkpoint_file_has_a_one_shape_manifest_but_the_digits_study():
    for path in CHECKPOINTS.glob("*.safetensors"):
        if path.name.startswith("digits_"):
            continue
        doc = json.loads(manifest_path(path).read_text())
        assert {"config", "provenance", "seeds", "metrics", "headline", "check", "commands", "files"} <= set(doc), path
        assert doc["commands"] and all(isinstance(c, str) for c in doc["commands"]), path


def test_a_checkpoint_the_code_no_longer_builds_names_the_version_that_made_it():
    with pytest.raises(CheckpointError, match=r"teleports\.0\.net\.0\.weight: saved \(32, 8\).*" + DIGITS_MADE_BY.replace("(", r"\(").replace(")", r"\)")):
        load_checkpoint(OLD_ARCHITECTURE)


@pytest.mark.slow  # 30 digits tasks × 200 steps per file (≈ 80 s); every file's loading is in the default run
@pytest.mark.parametrize("name", ["digits_update", "digits_update_tele", "digits_update_val", "digits_update_tele_val"])
def test_a_digits_study_file_reproduces_its_manifest_number(name):
    from metatele.evaluation.evaluate import evaluate
    doc = json.loads((CHECKPOINTS / "digits.manifest.json").read_text())
    entry = next(f for f in doc["files"] if f["path"] == f"{name}.safetensors")
    published = entry["checkpoint"]["evaluation"]
    ck = load_checkpoint(CHECKPOINTS / entry["path"])
    curves = evaluate(ck.optimizer, ck.config.task, range(*published["seeds"]), doc["config"]["learned_steps"])
    assert curves.log_loss[-1].mean() == pytest.approx(published["log10_train_loss_final"][0], abs=1e-6)


def test_the_registry_lists_exactly_the_packaged_files():
    files = {p.name.removesuffix(".safetensors") for p in pretrained_dir().glob("*.safetensors")}
    manifests = {p.name.removesuffix(".manifest.json") for p in pretrained_dir().glob("*.manifest.json")}
    assert files == manifests == set(REGISTRY)


def test_a_shipped_name_loads_where_a_path_does_and_a_file_wins(tmp_path, monkeypatch):
    name = next(iter(REGISTRY))
    opt = mt.load_optimizer(name)
    assert opt.config.arch == "coordinatewise"
    assert mt.load_checkpoint(name).path == pretrained_path(name)
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_bytes((CHECKPOINTS / "update.safetensors").read_bytes())  # a file of that name
    assert resolve_checkpoint(name) == Path(name)
    assert mt.load_optimizer(name).config.arch == "paper"
    with pytest.raises(CheckpointError, match=f"shipped optimizer: {name}"):
        mt.load_optimizer("no-such-optimizer")


def test_reports_name_a_shipped_file_by_its_name_and_any_other_by_its_path(tmp_path):
    from metatele.release.pretrained import shipped_name
    name = next(iter(REGISTRY))
    assert shipped_name(pretrained_path(name)) == name
    copy = tmp_path / f"{name}.safetensors"  # the same bytes and name elsewhere: not the shipped file
    copy.write_bytes(pretrained_path(name).read_bytes())
    assert shipped_name(copy) is None and shipped_name(CHECKPOINTS / "update.safetensors") is None


def test_metatele_pretrained_lists_one_line_per_name_with_its_headline(capsys):
    from metatele.cli import main

    assert main(["pretrained"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in REGISTRY:
        line = describe(name)
        assert line in lines and "log10 loss @ 10 /" in line and "seeds)" in line


def test_metatele_eval_and_compare_take_a_shipped_name(tmp_path, capsys):
    from metatele.cli import build_parser, main

    name = next(iter(REGISTRY))
    assert main(["eval", name, "--seeds", "3", "--steps", "5", "--out", str(tmp_path), "--wandb", "disabled"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [s["n_seeds"] for s in results["summaries"].values()] == [3, 3]  # the optimizer and GD
    for cmd in (["compare", name, "cw-update-gaussian"], ["transfer", name]):
        assert build_parser().parse_args([*cmd, "--out", "x"]).checkpoints[0] == str(pretrained_path(name))
    with pytest.raises(SystemExit):
        main(["eval", "nope", "--out", str(tmp_path / "x")])
    assert "no such file or shipped optimizer: nope" in capsys.readouterr().err


def test_a_listing_read_by_a_closed_pipe_ends_quietly():
    """`metatele pretrained | head -1`: the reader closes the pipe before the listing is written; the
    command stops without a traceback (it printed one from the BrokenPipeError)."""
    import subprocess
    import sys
    from helpers import subprocess_env
    proc = subprocess.Popen([sys.executable, "-m", "metatele", "pretrained"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=subprocess_env())
    proc.stdout.close()  # before the child has imported anything, let alone written
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and b"Traceback" not in err, err.decode()


def test_the_update_safeguard_deployed_on_a_generalist_trained_without_it_stops_its_divergence(tmp_path):
    """The first phase of meta-seed 0 of the generalist update+tele (its long run,
    ``experiments/long_runs/generalist_update_tele``), trained without the update safeguard, raises
    the loss of a held-out architecture until it diverges; redeployed with the safeguard and its
    backoff (:func:`metatele.release.checkpoint.redeploy`, same meta-parameters) it never raises it
    by more than the teleport safeguard's tolerance (validation seeds, 150 steps)."""
    import numpy as np
    from metatele.release.checkpoint import load_optimizer, redeploy
    task = mt.TaskConfig(dims=[24, 25, 42, 59, 9, 13], distribution="gaussian", bias=True)
    seeds = list(mt.validation_seeds(4))
    src = ROOT / "experiments" / "long_runs" / "generalist_update_tele" / "checkpoint.safetensors"
    assert not load_checkpoint(src).config.learned.coordinatewise.update_safeguard  # trained without it
    rises = {}
    for name, settings in (("raw", None), ("guarded", {"update_safeguard": True, "update_backoff": 0.5})):
        path = src if settings is None else redeploy(src, tmp_path / f"{name}.safetensors", settings, why="test")
        loss = np.asarray(mt.evaluate(load_optimizer(path, task=task), task, seeds, 150).loss, dtype=np.float64)
        rises[name] = np.nanmax(loss[1:] / loss[:-1])
    assert rises["raw"] > 1.5          # as trained, it raises the loss (on the way to diverging)
    assert rises["guarded"] <= 1 + 1e-3  # deployed with the safeguard, never by more than the tolerance
