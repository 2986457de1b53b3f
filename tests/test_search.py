"""Validation seeds, the m1 switches of the search (input RMS normalisation, GD skip) and
`metatele search` (ranking, files, quick run)."""
from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from metatele import cli
from metatele.configs import ConfigError, defaults_dir
from metatele.evaluation.evaluate import check_seeds
from metatele.optimizers.lstm import LSTMConfig, UpdateLSTM, log_space
from metatele.evaluation.identity import baseline_id, learned_id
from metatele.studies.aggregate import method_ids
from metatele.studies.search import rank_lr_candidates, rank_update_candidates, run_search
from metatele.tasks.family import (TEST_SEED_OFFSET, VALIDATION_SEED_OFFSET, is_test_seed, is_validation_seed,
                            training_seeds, unseen_seeds, validation_seeds)
from metatele.meta.train import TrainingFailed, meta_train
from metatele.meta.config import MetaTrainConfig

from helpers import tiny


# -- validation seeds -------------------------------------------------------------------------
def test_validation_seeds_are_training_split_tasks_disjoint_from_test_and_from_meta_training():
    v = validation_seeds(100)
    assert v[0] == VALIDATION_SEED_OFFSET and len(v) == 100 and v[-1] < TEST_SEED_OFFSET
    assert all(is_validation_seed(s) and not is_test_seed(s) for s in v)
    assert not set(v) & set(unseen_seeds(100))
    result = meta_train(MetaTrainConfig.from_dict(tiny()), progress=False)
    lo, hi = result.train_seeds
    assert hi < VALIDATION_SEED_OFFSET  # meta-training never reaches them
    with pytest.raises(ValueError, match="validation seed offsets"):
        validation_seeds(10, start=TEST_SEED_OFFSET - VALIDATION_SEED_OFFSET - 5)


def test_evaluator_accepts_validation_seeds_and_still_refuses_plain_training_seeds():
    seeds, note = check_seeds(validation_seeds(5), train_seeds=range(0, 100))
    assert note is None and seeds == list(validation_seeds(5))
    with pytest.raises(ValueError, match="neither test nor validation"):
        check_seeds(training_seeds(5, start=1000))
    with pytest.raises(ValueError, match="used in training"):
        check_seeds(validation_seeds(5), train_seeds=range(VALIDATION_SEED_OFFSET, VALIDATION_SEED_OFFSET + 2))


# -- m1 switches ------------------------------------------------------------------------------
SHAPES = [(5, 4), (3, 5)]


def _grads(B=3, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(B, *s, generator=g, dtype=torch.float64) for s in SHAPES]


def test_rms_input_norm_feeds_unit_rms_gradients_plus_a_log_scale_feature():
    cfg = LSTMConfig(hidden=4, input_norm="rms")
    x = torch.cat([g.flatten(1) for g in _grads(scale=300.0)], dim=1)
    enc, scale = cfg.encode(x)
    assert enc.shape == (3, x.shape[1] + 1) == (3, cfg.input_size(x.shape[1]))
    torch.testing.assert_close(enc[:, :-1].square().mean(1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(enc[:, -1:], scale.log() / 10)
    torch.testing.assert_close(scale.squeeze(1), x.square().mean(1).sqrt())


def test_rms_input_norm_makes_the_lstm_input_direction_independent_of_gradient_scale():
    torch.manual_seed(0)
    m1 = UpdateLSTM(SHAPES, LSTMConfig(hidden=8, input_norm="rms")).double()
    state = m1.initial_state(3, dtype=torch.float64)
    # zero the weight on the log-scale feature: the update is then exactly proportional to the scale
    with torch.no_grad():
        m1.net.cells[0].weight_ih[:, -1] = 0
    small, _ = m1(_grads(scale=1e-3), state)
    big, _ = m1(_grads(scale=1e3), state)
    for a, b in zip(small, big):
        torch.testing.assert_close(b, 1e6 * a)
    zero, _ = m1([torch.zeros(3, *s, dtype=torch.float64) for s in SHAPES], state)
    assert all(bool(torch.isfinite(z).all()) and z.abs().max() < 1e-12 for z in zero)  # no step, no NaN


def test_gd_skip_adds_a_gradient_step_whose_size_m1_writes_in_log_space():
    torch.manual_seed(0)
    cfg = LSTMConfig(hidden=8, gd_skip=True, skip_lr_min=1e-6, skip_lr_max=1e-2)
    m1 = UpdateLSTM(SHAPES, cfg).double()
    assert m1.net.head.out_features == m1.size + 1
    with torch.no_grad():  # a zero head: the LSTM's own update is 0 and the step size is at z = 0
        m1.net.head.weight.zero_()
        m1.net.head.bias.zero_()
    grads = _grads()
    updates, _ = m1(grads, m1.initial_state(3, dtype=torch.float64))
    eta = math.sqrt(1e-6 * 1e-2)  # the geometric mean of the range
    for u, g in zip(updates, grads):
        torch.testing.assert_close(u, eta * g)
    z = torch.linspace(-30, 30, 7, dtype=torch.float64)
    lr = log_space(z, 1e-6, 1e-2)
    assert lr.min() >= 1e-6 and lr.max() <= 1e-2 and bool((lr.diff() > 0).all())


@pytest.mark.parametrize("key,value,field", [("input_norm", "l2", "lstm.input_norm"),
                                             ("skip_lr_min", 0.5, "lstm.skip_lr_min/skip_lr_max")])
def test_lstm_switches_reject_bad_values_naming_the_field(key, value, field):
    with pytest.raises(ConfigError, match=field.replace("/", ".")):
        LSTMConfig(**{key: value})


@pytest.mark.parametrize("switches", [
    {"learned.lstm.gd_skip": True, "learned.lstm.output_scale": 0.01},
    # input_norm rms once gave non-finite meta-gradients from meta-step 2 (a diverged row's inf / inf
    # input poisoned the LSTM's weight gradient); see test_engine.py
    {"learned.lstm.input_norm": "rms"},
])
def test_meta_training_with_the_m1_switches_lowers_the_meta_loss(switches):
    cfg = MetaTrainConfig.from_dict(tiny(**{"learned.variant": "update", "trajectories": 400, "steps": 6,
                                            "batch_size": 20, "meta_loss": "mean_log", "lr_update": 3e-3,
                                            "dtype": "float32", "task.distribution": "uniform", **switches}))
    res = meta_train(cfg, progress=False)
    first = sum(h["mean_log10_loss"] for h in res.history[:10]) / 10
    last = sum(h["mean_log10_loss"] for h in res.history[-10:]) / 10
    assert last < first - 0.3, (first, last)


# -- ranking ----------------------------------------------------------------------------------
def _stat(mean, half=0.05, diverged=0):
    return {"mean": mean, "ci95": [mean - half, mean + half], "n_diverged": diverged}


def _summary(means, diverged=0):
    return {"at_step": {str(s): _stat(m, diverged=diverged) for s, m in zip((10, 30, 100), means)},
            "n_diverged": diverged}


def _id(name):
    """Identities as the benchmark records them (the names here follow the search's convention)."""
    if not name.startswith("LSTM("):
        return baseline_id(name).to_dict()
    variant, tag = name[len("LSTM("):].split(") [")
    return learned_id(name, variant, tag[:-1]).to_dict()


def _results(settings):
    return {"steps": [10, 30, 100], "sections": {
        name: {"kind": "setting", "label": name, "methods": {m: {"summary": s, "id": _id(m)} for m, s in ms.items()},
               "comparisons": comps} for name, (ms, comps) in settings.items()}}


def test_update_candidates_are_ranked_by_the_target_criteria():
    good = {"LSTM(update+tele) [good]": _summary([1.0, 0.8, 0.7]), "LSTM(update) [good]": _summary([1.2, 1.0, 0.9])}
    drift = {"LSTM(update+tele) [drift]": _summary([1.0, 0.8, 0.85]), "LSTM(update) [drift]": _summary([1.2, 1.0, 1.0])}
    diverges = {"LSTM(update+tele) [div]": _summary([0.5, 0.4, 0.3], diverged=3),
                "LSTM(update) [div]": _summary([1.2, 1.0, 0.9])}
    tie = {"LSTM(update+tele) [tie]": _summary([1.0, 0.8, 0.7]), "LSTM(update) [tie]": _summary([1.02, 0.82, 0.72])}
    ms = {**tie, **drift, **diverges, **good, "gd(tuned)": _summary([2, 2, 2])}
    ranked = rank_update_candidates(_results({"u": (ms, []), "g": (ms, [])}))
    assert [e["tag"] for e in ranked] == ["good", "div", "drift", "tie"]
    assert ranked[0]["reached"] and ranked[0]["met"] == ranked[0]["total"] == 10
    assert ranked[1]["settings"]["g"]["diverged"] == 3 and ranked[1]["met"] == 8 and not ranked[1]["reached"]
    assert not ranked[2]["settings"]["u"]["no_drift"] and ranked[2]["met"] == 8
    assert ranked[1]["mean_diff"] < ranked[2]["mean_diff"]  # same count: the larger gain ranks first
    assert ranked[3]["met"] == 4  # overlapping CIs: only drift and divergence criteria


def test_candidates_come_from_the_recorded_identities_not_from_the_names():
    ms = {"LSTM(update+tele) [good]": _summary([1.0, 0.8, 0.7]), "LSTM(update) [good]": _summary([1.2, 1.0, 0.9])}
    results = _results({"u": (ms, [])})
    entries = results["sections"]["u"]["methods"]
    entries["tele, renamed"] = entries.pop("LSTM(update+tele) [good]")
    entries["tele, renamed"]["id"] = learned_id("tele, renamed", "update+tele", "good").to_dict()
    ranked = rank_update_candidates(results)
    assert [(e["tag"], e["a"], e["b"]) for e in ranked] == [("good", "tele, renamed", "LSTM(update) [good]")]
    assert method_ids(results, "u")["tele, renamed"].teleport and not method_ids(results, "u")["LSTM(update) [good]"].teleport


def test_lr_candidates_need_a_significant_win_over_tuned_gd_in_every_setting():
    def comp(a, decision, diff):
        return {"a": a, "b": "gd(tuned)", "step": 100, "decision": decision, "mean_diff": diff}

    a, b = "LSTM(lr+tele) [a]", "LSTM(lr+tele) [b]"
    res = _results({
        "u": ({a: None, b: None}, [comp(a, "lower", -0.1), comp(b, "lower", -0.3)]),
        "g": ({a: None, b: None}, [comp(a, "lower", -0.1), comp(b, "higher", 0.2)]),
    })
    ranked = rank_lr_candidates(res)
    assert [e["tag"] for e in ranked] == ["a", "b"] and ranked[0]["reached"] and not ranked[1]["reached"]


# -- the command ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    threads = torch.get_num_threads()
    try:
        assert cli.main(["search", "--quick", "--out", str(out), "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_quick_search_evaluates_on_validation_seeds_and_writes_the_selection(quick):
    results = json.loads((quick / "results.json").read_text())
    ts = results["test_seeds"]
    assert ts["split"] == "validation" and ts["start"] == VALIDATION_SEED_OFFSET
    for sec in results["sections"].values():  # no learned run was trained on a validation seed
        for entry in sec["methods"].values():
            for info in entry.get("meta_seeds_info", []):
                assert info["train_seeds"][1] <= VALIDATION_SEED_OFFSET
    selected = yaml.safe_load((quick / "search_selected.yaml").read_text())
    ranked = rank_update_candidates(results)
    assert selected["update+tele"]["tag"] == ranked[0]["tag"]
    assert set(selected["update+tele"]["methods"]) == {"LSTM(update+tele)", "LSTM(update)"}
    assert selected["lr+tele"]["tag"] == "paper"
    text = (quick / "SEARCH.md").read_text()
    assert "validation seeds" in text and f"candidate `{ranked[0]['tag']}`" in text
    assert "validation seeds" in (quick / "RESULTS.md").read_text().split("## Protocol")[1][:400]


def test_search_render_only_reproduces_the_selection(quick, tmp_path):
    sel = tmp_path / "sel.yaml"
    assert cli.main(["search", "--quick", "--out", str(quick), "--render-only", "--report", str(tmp_path / "S.md"),
                     "--selected", str(sel)]) == 0
    body = lambda p: p.read_text().split("\n", 1)[1]  # noqa: E731  (past the header line)
    assert yaml.safe_load(body(sel)) == yaml.safe_load(body(quick / "search_selected.yaml"))


def test_search_refuses_a_protocol_that_evaluates_on_test_seeds(tmp_path, capsys):
    assert cli.main(["search", "--quick", "--out", str(tmp_path), "--set", "eval_split=test"]) == 2
    assert "validation seeds" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="eval_split"):
        run_search("search_quick", tmp_path, overrides=["eval_split=holdout"])


@pytest.mark.parametrize("dist,setting", [("uniform", "uniform-20"), ("gaussian", "gaussian-20")])
def test_shipped_selected_configs_are_the_benchmarks_meta_seed_0_runs_and_match_the_selection(dist, setting):
    from metatele.studies.benchmark import load_protocol
    from metatele.studies.protocol import expand
    from metatele.meta.config import load_config

    protocol, _ = load_protocol(defaults_dir() / "benchmark_lstm.yaml")  # the paper-architecture benchmark
    selected = yaml.safe_load(open(defaults_dir() / "search_selected.yaml"))
    for name, method, key in [("update_tele", "LSTM(update+tele)", "update+tele"),
                              ("update", "LSTM(update)", "update+tele"), ("lr_tele", "LSTM(lr+tele)", "lr+tele")]:
        shipped = load_config(f"ship/selected_{name}_{dist}").to_dict()
        bench = protocol.learned_config(setting, method, 0).to_dict()
        assert {**shipped, "device": bench["device"]} == bench, name
        # the benchmark's main methods carry the switches the search selected
        spec = selected[key]["methods"][method]
        want = expand({**spec["overrides"], **spec["setting_overrides"].get(setting, {})})

        def sub(d, ref):
            return all(sub(v, ref[k]) if isinstance(v, dict) else ref[k] == v for k, v in d.items())
        assert sub(want, bench), (name, want)


def test_every_shipped_checkpoint_matches_its_manifest_and_the_selected_ones_their_configs():
    from pathlib import Path

    from metatele.release.checkpoint import load_checkpoint
    from metatele.release.manifest import verify_manifest
    from metatele.meta.config import load_config
    from metatele.studies.benchmark import RETRAIN_CONFIG, load_protocol

    manifests = sorted(Path("checkpoints").glob("*.manifest.json"))
    names = {m.name.removesuffix(".manifest.json") for m in manifests}
    assert {"update_tele", "update", "lr_tele", "selected_update_tele_uniform", "selected_update_tele_gaussian",
            "selected_lr_tele_uniform", "selected_lr_tele_gaussian"} <= names
    listed = {Path(f["path"]).stem for m in manifests for f in json.loads(m.read_text())["files"]}
    assert (names - {"digits"}) | listed == {p.stem for p in Path("checkpoints").glob("*.safetensors")}  # each has a manifest
    for m in manifests:
        verify_manifest(m)  # sha256 of the checkpoint as recorded
        name = m.name.removesuffix(".manifest.json")
        if name == "digits":  # the digits study's checkpoints: one manifest, configs from the study
            continue
        ck = load_checkpoint(Path("checkpoints") / f"{name}.safetensors")
        bench = (json.loads(m.read_text()).get("extra") or {}).get("benchmark") if name.startswith("benchmark_") else None
        if bench:  # the benchmark's learned methods: the config is the default protocol's for that run
            protocol, _ = load_protocol(RETRAIN_CONFIG)
            want = protocol.learned_config(bench["setting"], bench["method"], bench["meta_seed"]).to_dict()
        else:
            want = load_config(f"ship/{name}").to_dict()
        assert {**want, "device": ck.config.device} == ck.config.to_dict(), name


def test_meta_training_cannot_start_or_run_into_the_validation_seeds():
    with pytest.raises(ConfigError, match="train_seed_start"):
        MetaTrainConfig.from_dict(tiny(train_seed_start=VALIDATION_SEED_OFFSET))
    cfg = MetaTrainConfig.from_dict(tiny(train_seed_start=VALIDATION_SEED_OFFSET - 6, trajectories=40))
    with pytest.raises(ValueError, match="reached the validation seeds"):
        meta_train(cfg, progress=False)
