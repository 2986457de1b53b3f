"""`metatele benchmark`: the protocol, its statistics and the files it writes (quick scale)."""
from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from metatele import cli
from metatele.studies.benchmark import QUICK_CONFIG, RETRAIN_CONFIG, expand, load_protocol
from metatele.configs import ConfigError, defaults_dir
from metatele.optimizers.baselines import BaselineConfig
from metatele.release.checkpoint import load_checkpoint
from metatele.release.manifest import rerun_check
from metatele.evaluation.evaluate import Curves, evaluate
from metatele.evaluation.format import num
from metatele.evaluation.stats import decision, paired_comparison, summarize
from metatele.studies.aggregate import combine_meta_seeds, compare_pairs, load_curves, save_curves
from metatele.meta.mixture import build_engine
from metatele.tasks.family import TEST_SEED_OFFSET, TaskConfig, unseen_seeds


def main(argv: list[str]) -> int:
    """``metatele benchmark ARGV`` (its parser is in metatele.cli)."""
    return cli.main(["benchmark", *argv])

WORSE = "gd(tiny)"  # a baseline configured to be clearly worse than tuned GD
EXTRA = [
    "--set", f"baselines.{WORSE}={{name: gd, lr: 1.0e-9}}",
    "--set", f"comparisons=[[{WORSE}, gd(tuned)], [LSTM(update+tele), LSTM(update)], [LSTM(lr+tele), gd(tuned)], "
             "[CW(update+tele), adam(tuned@*)]]",
]
# two meta-seeds (the protocol's three cost a third more): enough for every per-meta-seed table
# and the meta-training noise; the protocols' own seed counts are checked on their YAMLs
TWO_SEEDS = ["--set", "meta_seeds=[0, 1]"]
SUBSET = ["--settings", "uniform-small", "--methods", "LSTM(update+tele)", "gd(tuned)", "--ablations", "none"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One quick benchmark through the top-level CLI; yields (out dir, argv, results dict)."""
    out = tmp_path_factory.mktemp("bench")
    # two workers (CI has two cores): the serial runs of the tests below reproduce the pool's numbers
    argv = ["--quick", "--out", str(out), "--no-progress", "--workers", "2", *TWO_SEEDS, *EXTRA]
    threads = torch.get_num_threads()
    try:
        assert cli.main(["benchmark", *argv]) == 0
    finally:
        torch.set_num_threads(threads)
    return out, argv, json.loads((out / "results.json").read_text())


def _close(a, b, tol=1e-9):
    if a is None or b is None or (isinstance(b, float) and not math.isfinite(b)):
        return (a is None or not math.isfinite(a)) and (b is None or not math.isfinite(b))
    return abs(a - b) <= tol * max(1.0, abs(b))


def _same_summary(json_sm, sm):
    assert json_sm["n_seeds"] == sm["n_seeds"] and _close(json_sm["diverged_fraction"], sm["diverged_fraction"])
    for s, st in sm["at_step"].items():
        js = json_sm["at_step"][str(s)]
        assert js["n"] == st["n"]
        for k in ("mean", "median", "std"):
            assert _close(js[k], st[k]), (s, k)
        assert all(_close(x, y) for x, y in zip(js["ci95"], st["ci95"]))


# -- the report --------------------------------------------------------------------------------
def test_report_states_command_tables_with_cis_pvalues_and_figures(run):
    out, argv, results = run
    text = (out / "RESULTS.md").read_text()
    assert results["command"] == "metatele benchmark " + " ".join(
        a if re.fullmatch(r"[\w./=-]+", a) else f"'{a}'" for a in argv)
    assert results["command"] in text
    for s in (10, 30, 100):
        assert f"log10 loss @ {s}" in text
    assert re.search(r"\| gd\(tuned\) \| −?\d+\.\d\d \[−?\d+\.\d\d, −?\d+\.\d\d\]", text)  # mean [CI] cells
    assert "## Verdicts" in text and "## Wall time per stage" in text and "## Protocol configuration" in text
    for name, sec in results["sections"].items():  # the best mean of each column in bold
        methods = [m for m in sec["methods"].values() if m.get("summary")]
        for s in (10, 100):
            means = [m["summary"]["at_step"][str(s)]["mean"] for m in methods if str(s) in m["summary"]["at_step"]]
            best = min(x for x in means if x is not None and math.isfinite(x))
            assert re.search(rf"\*\*{num(best)} \[", text), (name, s)
    c = next(c for sec in results["sections"].values() for c in sec["comparisons"] if c["test"] == "t")
    a, b = c.get("pair") or (c["a"], c["b"])
    row = next(line for line in text.splitlines() if line.startswith(f"| ") and f" | {a} − {b} | " in line)
    assert f"{num(c['mean_diff'], '.3f')} [{num(c['ci95'][0], '.3f')}, {num(c['ci95'][1], '.3f')}]" in row
    for name, rel in results["figures"].items():
        assert (out / "figures" / f"results_{name.replace('(', '-').replace(')', '')}.png").is_file() or \
            (out / rel).is_file()
    assert all(f"]({rel})" in text for rel in (p.split(str(out) + "/")[-1] for p in results["figures"].values()))
    assert set(results["sections"]) == {"uniform-small", "gaussian-small", "gaussian-deep-small", "ablations",
                                        "transfer-wider", "transfer-biases"}


def test_results_json_matches_a_recomputation_from_the_saved_curves(run):
    out, _, results = run
    curves = load_curves(out / "curves.npz")
    alpha, steps = results["alpha"], results["steps"]
    for name, sec in results["sections"].items():
        flat = {}
        for m, entry in sec["methods"].items():
            saved = curves[name][m]
            if entry["kind"] == "baseline":
                flat[m] = saved["baseline"]
            else:
                per_seed = [saved[f"seed{i['meta_seed']}"] for i in entry["meta_seeds_info"]]
                combined = combine_meta_seeds(m, per_seed)
                np.testing.assert_allclose(combined.loss, saved["combined"].loss, rtol=1e-12)
                for sm, c in zip(entry["meta_seeds"], per_seed):
                    _same_summary(sm, summarize(c, steps))
                flat[m] = combined
            _same_summary(entry["summary"], summarize(flat[m], steps))
        pairs = [c.get("pair", [c["a"], c["b"]]) for c in sec["comparisons"]]
        redo = compare_pairs(flat, list(dict.fromkeys(map(tuple, pairs))), steps, alpha)
        assert len(redo) == len(sec["comparisons"])
        for j, c in zip(sec["comparisons"], redo):
            assert (j["a"], j["b"], j["step"], j["decision"]) == (c["a"], c["b"], c["step"], c["decision"])
            assert _close(j["mean_diff"], c["mean_diff"]) and _close(j["p_value"], c["p_value"])
            assert j["wins"] == c["wins"] and j["verdict"] == c["verdict"]


def test_every_method_is_evaluated_on_the_same_unseen_test_seeds(run):
    out, _, results = run
    with np.load(out / "curves.npz") as z:
        assert list(z["test_seeds"]) == list(unseen_seeds(100))
    assert results["test_seeds"] == {"start": TEST_SEED_OFFSET, "count": 100, "split": "test"}
    for sec in results["sections"].values():
        assert sec["comparisons"] and all(c["n_seeds"] == 100 for c in sec["comparisons"])
    c = Curves("x", [TEST_SEED_OFFSET, TEST_SEED_OFFSET + 1], np.ones((3, 2)), np.ones((3, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="shared test seeds"):
        save_curves(out / "bad.npz", {"s": {"x": {"baseline": c}}}, [TEST_SEED_OFFSET, TEST_SEED_OFFSET + 2])


def test_a_clearly_worse_method_is_reported_worse_with_a_small_p(run):
    _, _, results = run
    for name, sec in results["sections"].items():
        if sec["kind"] != "setting":
            continue
        comps = [c for c in sec["comparisons"] if c["a"] == WORSE]
        assert [c["step"] for c in comps] == [10, 30, 100]
        for c in comps:
            assert c["decision"] == "higher" and c["mean_diff"] > 0.1 and c["p"] < 1e-6, c
            assert c["verdict"].endswith("→ worse")
        assert any(s.startswith(f"On {sec['label']}, {WORSE} vs gd(tuned): higher at step 10 ")
                   for s in results["conclusions"])


def test_decisions_agree_with_verdicts_and_the_conclusions_quote_them(run):
    _, _, results = run
    word = {"lower": "better", "higher": "worse", "no significant difference": "no significant difference"}
    text = " ".join(results["conclusions"])
    for sec in results["sections"].values():
        for c in sec["comparisons"]:
            assert c["verdict"].endswith(word[c["decision"]])
            assert decision(c, results["alpha"]) == c["decision"]
            assert f"{c['decision']} at step {c['step']}" in text


def test_checkpoints_are_written_with_provenance_and_reproduce_their_curves(run):
    out, _, results = run
    curves = load_curves(out / "curves.npz")
    n = 0
    for name, sec in results["sections"].items():
        ranges = []
        for m, entry in sec["methods"].items():
            for info in entry.get("meta_seeds_info", []):
                ck = load_checkpoint(info["checkpoint"])
                assert ck.provenance["training_seeds"] == [info["train_seeds"]]
                assert ck.provenance["meta_steps"] == info["meta_steps"] and ck.config.seed == info["meta_seed"]
                a, b = info["train_seeds"]
                assert 0 <= a < b <= TEST_SEED_OFFSET
                ranges.append((m, info["meta_seed"], a, b))
                if n < 4:  # the saved optimizer reproduces its evaluation curve
                    seeds = list(unseen_seeds(5))
                    c = evaluate(ck.optimizer, ck.config.task, seeds, 10)
                    np.testing.assert_allclose(c.loss, curves[name][m][f"seed{info['meta_seed']}"].loss[:11, :5],
                                               rtol=1e-5)
                n += 1
        by_seed = {}
        for m, k, a, b in ranges:  # each meta-seed trains on its own training tasks
            by_seed.setdefault(k, set()).add((a, b))
        for k, j in ((k, j) for k in by_seed for j in by_seed if k < j):
            assert all(b1 <= a2 or b2 <= a1 for a1, b1 in by_seed[k] for a2, b2 in by_seed[j])
    # meta-seeds × (methods × settings, ablation arms and references, transferred methods × targets)
    assert n == len(results["meta_seeds"]) * (7 * 3 + 13 + 2 * 2)
    assert (out / "checkpoints" / "uniform-small" / "LSTM-update+tele" / "seed1.safetensors").is_file()


LSTM_CONFIG = defaults_dir() / "benchmark_lstm.yaml"


# -- the protocol ------------------------------------------------------------------------------
def test_lstm_protocol_meets_the_paper_benchmark_requirements():
    p, _ = load_protocol(LSTM_CONFIG)
    assert len(p.meta_seeds) >= 3 and p.test_seeds >= 100 and {10, 30, 100, 300} <= set(p.steps)
    dists = {s.task.distribution for s in p.settings.values()}
    assert dists == {"uniform", "gaussian"}
    deeper = [s.task.dims for s in p.settings.values() if s.task.dims != [20, 20, 20, 20]]
    assert deeper and all(d[0] <= min(d[1:-1]) for d in deeper)
    assert {p.learned_config(s, m, 0).learned.variant for s in p.settings for m in p.methods} == \
        {"update", "update+tele", "lr+tele"}
    gd = [p.baseline(b) for b in p.baselines]
    assert any(c.name == "gd" and c.lr == 3e-4 and not tune for c, tune in gd)
    assert {c.name for c, tune in gd if tune} >= {"gd", "adam"}


def test_the_retraining_protocol_asks_the_long_horizon_question_of_issue_13():
    """3 meta-seeds, 100 test seeds, steps to 3000 with divergence rates at 1000 and 3000, gaussian
    and uniform [20, 20, 20, 20], a learned update+tele with its update-only twin and a learned
    teleport on Adam, the paper's rows, Adam tuned per horizon, transfer to a deeper network and one
    with biases, targets and an ablation of every teleport switch."""
    p, _ = load_protocol(RETRAIN_CONFIG)
    assert len(p.meta_seeds) >= 3 and p.test_seeds >= 100
    assert {10, 30, 100, 300, 1000, 3000} <= set(p.steps) and {1000, 3000} <= set(p.divergence_steps)
    assert {(tuple(s.task.dims), s.task.distribution) for s in p.settings.values()} == \
        {((20, 20, 20, 20), "uniform"), ((20, 20, 20, 20), "gaussian")}
    configs = {m: p.learned_config("gaussian-20", m, 0) for m in p.methods}
    assert {c.learned.variant for c in configs.values()} == {"update", "update+tele", "tele"}
    assert {c.learned.arch for c in configs.values()} == {"coordinatewise", "paper"}
    tele, twin = configs["CW(update+tele)"].to_dict(), configs["CW(update)"].to_dict()
    assert {k for k in tele if tele[k] != twin[k]} == {"learned", "lr_teleport"}  # m2's rate: the twin has no m2
    assert {k for k in tele["learned"] if tele["learned"][k] != twin["learned"][k]} == {"variant"}
    long = configs["CW(update+tele)"]
    assert long.steps >= 1000 and long.horizon == "log_uniform"
    assert {f"adam(tuned@{h})" for h in p.steps} <= set(p.horizon_groups["adam(tuned)"])  # tuned per horizon
    # the strongest-baseline rule: what is compared with tuned Adam is compared with tuned heavy ball too
    assert {f"momentum(tuned@{h})" for h in p.steps} <= set(p.horizon_groups["momentum(tuned)"])
    assert all(p.baseline(f"momentum(tuned@{h})") == (BaselineConfig(name="momentum"), True) for h in p.steps)
    against_adam = {a for a, b in p.comparisons if b == "adam(tuned@*)"}
    assert against_adam >= {"CW(update+tele)", "CW(update)"}
    assert {a for a, b in p.comparisons if b == "momentum(tuned@*)"} == against_adam
    assert p.transfer is not None and len(p.transfer.targets) >= 2
    assert any(t.task.bias for t in p.transfer.targets.values())
    assert any(len(t.task.dims) > 4 for t in p.transfer.targets.values())
    rules = {t.rule for t in p.targets}
    assert rules == {"ci_below", "no_worse", "diverged_at_most"}
    def flat(d, prefix=""):
        return {k: v for key, val in d.items()
                for k, v in (flat(val, f"{prefix}{key}.") if isinstance(val, dict) else {f"{prefix}{key}": val}).items()}

    switches = {k for ab in p.ablations.values() for k in flat(expand(ab.overrides))}
    assert {f"learned.coordinatewise.ablation.{k}" for k in ("tele_gradient_input", "every", "gate", "learn_norm",
                                                             "teleport_state")} | {"learned.teleport.exact",
                                                                                   "estimator"} <= switches


@pytest.mark.parametrize("config", [LSTM_CONFIG, QUICK_CONFIG, RETRAIN_CONFIG])
def test_each_ablation_changes_only_its_own_switch(config):
    p, _ = load_protocol(config)

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    switches = set()
    for name, ab in p.ablations.items():
        arm = flat(p.learned_config(p.ablation_setting, ab.method, 0, name).to_dict())
        ref = flat(p.learned_config(p.ablation_setting, ab.method, 0, name, reference=True).to_dict())
        changed = {k for k in arm if arm[k] != ref[k]}
        assert changed == set(flat(expand(ab.overrides))) and changed, name
        switches |= changed
    if config != RETRAIN_CONFIG:  # the paper-architecture ablations
        assert {"learned.teleport.exact", "learned.lstm.preprocess", "meta_loss", "learned.teleport.learn_eps",
                "second_order", "learned.teleport.lr_log_space", "truncation"} <= switches
        assert "unroll" in switches


def test_dry_run_lists_stages_and_bad_configs_fail_with_the_field_named(capsys):
    assert main(["--quick", "--dry-run"]) == 0
    assert "uniform-small: LSTM(update+tele) seed 2" in capsys.readouterr().out
    assert main(["--quick", "--dry-run", "--set", "base.trajectorys=3"]) == 2
    assert "trajectorys" in capsys.readouterr().err
    assert main(["--quick", "--dry-run", "--set", "comparisons=[[LSTM(update), nope]]"]) == 2
    assert "comparisons" in capsys.readouterr().err
    assert main(["--quick", "--dry-run", "--settings", "nowhere"]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_combining_meta_seeds_averages_log_losses_and_keeps_divergence():
    seeds = [TEST_SEED_OFFSET, TEST_SEED_OFFSET + 1]
    a = Curves("m", seeds, np.array([[100.0, 10.0], [1.0, 1.0]]), np.ones((2, 2)), np.zeros(2))
    b = Curves("m", seeds, np.array([[1.0, 1000.0], [100.0, np.inf]]), np.ones((2, 2)), np.zeros(2))
    c = combine_meta_seeds("m", [a, b])
    np.testing.assert_allclose(c.log_loss[0], [1.0, 2.0])
    assert c.log_loss[1, 0] == pytest.approx(1.0) and np.isinf(c.loss[1, 1])
    with pytest.raises(ValueError, match="share test seeds"):
        combine_meta_seeds("m", [a, Curves("m", seeds[::-1], a.loss, a.grad_sq, a.time)])
    comp = paired_comparison(c, c, 0)
    assert decision(comp) == "no significant difference"


# -- running variants --------------------------------------------------------------------------
def test_parallel_workers_and_resume_reproduce_the_same_numbers(run, tmp_path):
    """One worker and a resumed run give the numbers of the fixture's two workers, bit for bit."""
    out, _, _ = run
    ref = load_curves(out / "curves.npz")["uniform-small"]
    threads = torch.get_num_threads()
    try:
        par = tmp_path / "par"
        assert main(["--quick", "--out", str(par), "--no-progress", "--workers", "1", *SUBSET, *TWO_SEEDS]) == 0
        res = tmp_path / "res"
        shutil.copytree(out / "checkpoints" / "uniform-small", res / "checkpoints" / "uniform-small")
        assert main(["--quick", "--out", str(res), "--no-progress", "--resume", *SUBSET, *TWO_SEEDS]) == 0
    finally:
        torch.set_num_threads(threads)
    for where, reused in ((par, False), (res, True)):
        got = load_curves(where / "curves.npz")["uniform-small"]
        for label in ("seed0", "seed1", "combined"):
            np.testing.assert_array_equal(got["LSTM(update+tele)"][label].loss, ref["LSTM(update+tele)"][label].loss)
        np.testing.assert_array_equal(got["gd(tuned)"]["baseline"].loss, ref["gd(tuned)"]["baseline"].loss)
        timings = json.loads((where / "results.json").read_text())["timings"]
        assert {t.get("reused") for t in timings if t["stage"] == "meta-train"} == {reused}


def test_transfer_evaluations_in_the_worker_pool_reproduce_the_serial_ones(run, tmp_path):
    """With 2 workers (the fixture) the transfer evaluations run in the pool as their checkpoints
    finish: the same curves (bit for bit), entries, timings records and report order as with 1 worker."""
    out, _, results = run
    ref = load_curves(out / "curves.npz")
    threads = torch.get_num_threads()
    try:
        par = tmp_path / "par"
        assert main(["--quick", "--out", str(par), "--no-progress", "--workers", "1", "--settings", "gaussian-small",
                     "--methods", "CW(update+tele)", "LSTM(update+tele)", "--ablations", "none", *TWO_SEEDS]) == 0
    finally:
        torch.set_num_threads(threads)
    got, par_results = load_curves(par / "curves.npz"), json.loads((par / "results.json").read_text())
    keep = ("meta_seed", "train_seeds", "meta_steps", "diverged_trajectories", "reused", "shared_with")
    for name in ("transfer-wider", "transfer-biases"):
        for label in ("seed0", "seed1", "combined"):
            np.testing.assert_array_equal(got[name]["CW(update+tele)"][label].loss, ref[name]["CW(update+tele)"][label].loss)
        sec, ref_sec = par_results["sections"][name], results["sections"][name]
        assert list(sec["methods"]) == ["CW(update+tele)"] and sec["skipped"] == ref_sec["skipped"]
        e, ref_e = sec["methods"]["CW(update+tele)"], ref_sec["methods"]["CW(update+tele)"]
        assert {k: e[k] for k in ("kind", "id", "config", "failed", "transferred_from", "summary")} == \
            {k: ref_e[k] for k in ("kind", "id", "config", "failed", "transferred_from", "summary")}
        assert [{k: i[k] for k in keep} for i in e["meta_seeds_info"]] == [{k: i[k] for k in keep} for i in ref_e["meta_seeds_info"]]
        assert [i["checkpoint"] for i in e["meta_seeds_info"]] == [
            str(par / "checkpoints" / "gaussian-small" / "CW-update+tele" / f"seed{k}.safetensors") for k in (0, 1)]
        for r in (par_results, results):  # the pool records them in the serial order
            records = [(t["method"], t["meta_seed"]) for t in r["timings"]
                       if t["section"] == name and t["method"] == "CW(update+tele)"]
            assert records == [("CW(update+tele)", k) for k in (0, 1)]
    assert list(par_results["sections"]) == ["gaussian-small", "transfer-wider", "transfer-biases"]
    assert [s for s in results["sections"] if s.startswith("transfer")] == ["transfer-wider", "transfer-biases"]
    assert list(par_results["phases"])[1] == ("learned: meta-train + evaluate + transfer evaluate "
                                               "(4 runs + 4 transfer evaluations, 1 worker)")
    assert list(results["phases"])[1] == ("learned: meta-train + evaluate + transfer evaluate "
                                           "(62 runs + 8 transfer evaluations, 2 workers)")
    assert not any(ph.startswith("transfer") for r in (par_results, results) for ph in r["phases"])


def test_a_meta_training_that_diverges_is_reported_and_the_other_meta_seeds_are_kept(tmp_path, monkeypatch):
    import metatele.meta.train
    from metatele.meta.engine import DivergenceError

    real = metatele.meta.train.meta_train

    def flaky(config, **kw):
        if config.seed == 1:
            raise DivergenceError("every one of the 8 trajectories diverged; lower lr_update")
        return real(config, **kw)

    monkeypatch.setattr(metatele.meta.train, "meta_train", flaky)
    threads = torch.get_num_threads()
    try:
        assert main(["--quick", "--out", str(tmp_path), "--no-progress", *SUBSET]) == 0
    finally:
        torch.set_num_threads(threads)
    results = json.loads((tmp_path / "results.json").read_text())
    entry = results["sections"]["uniform-small"]["methods"]["LSTM(update+tele)"]
    assert [f["meta_seed"] for f in entry["failed"]] == [1]
    assert [i["meta_seed"] for i in entry["meta_seeds_info"]] == [0, 2] and len(entry["meta_seeds"]) == 2
    assert not (tmp_path / "checkpoints" / "uniform-small" / "LSTM-update+tele" / "seed1.safetensors").exists()
    assert any("failed for meta-seed(s) 1 (DivergenceError: every one of the 8 trajectories diverged)" in s
               for s in results["conclusions"])
    assert "failed for meta-seed(s) 1" in (tmp_path / "RESULTS.md").read_text()


def test_target_check_is_generated_from_the_numbers_and_render_only_reproduces_the_report(run):
    out, argv, results = run
    text = (out / "RESULTS.md").read_text()
    assert "## Target: a learned teleport that reliably helps" in text
    goal = results["goal"]
    settings = [s for s in results["sections"].values() if s["kind"] == "setting"]
    assert len(goal) == len(settings) + 1
    for line, sec in zip(goal, settings):
        ut = sec["methods"]["LSTM(update+tele)"]["summary"]["at_step"]
        u = sec["methods"]["LSTM(update)"]["summary"]["at_step"]
        separated = [ut[str(s)]["ci95"][1] < u[str(s)]["ci95"][0] for s in (10, 30, 100)]
        no_drift = ut["100"]["mean"] <= ut["30"]["mean"]
        if not all(separated) or not no_drift:
            assert line.endswith("**Not reached.**"), line
    from pathlib import Path

    figure = Path(next(iter(results["figures"].values())))
    figure.unlink()
    assert cli.main(["benchmark", "--quick", "--out", str(out), "--render-only"]) == 0
    assert (out / "RESULTS.md").read_text() == text
    assert figure.is_file()  # redrawn from curves.npz


def test_in_short_summary_states_each_measured_pair_with_its_decisions_and_differences(run):
    from metatele.studies.summary import SUMMARY_PAIRS, summary_lines, summary_pairs

    out, argv, results = run
    lines = summary_lines(results)
    text = (out / "RESULTS.md").read_text()
    assert "## In short: where learned teleportation helps" in text and all(line in text for line in lines)
    # the protocol's teleport_help pairs join the fixed ones (the quick protocol's adam+CW(tele) pair)
    pairs = summary_pairs(results)
    assert pairs[:len(SUMMARY_PAIRS)] == list(SUMMARY_PAIRS)
    assert ("adam+CW(tele)", "adam(lr=1e-2)", "a learned teleport on top of Adam") in pairs
    settings = [s for s in results["sections"].values() if s["kind"] == "setting"]
    others = [s for s in results["sections"].values() if s["kind"] != "ablations"
              and any((c["a"], c["b"]) == (a, b) for c in s["comparisons"] for a, b, _ in pairs)]
    assert len(lines) == len(others) + 1  # one per setting (or transfer target) with such a pair, one for the ablations
    for line, sec in zip(lines, settings):
        assert line.startswith(f"**{sec['label']}**")
        cs = [c for c in sec["comparisons"] if c["a"] == "LSTM(update+tele)" and c["b"] == "LSTM(update)"]
        assert cs and "(LSTM(update+tele) − LSTM(update))" in line
        for c in cs:  # each step is listed under its own decision, with its Δ
            word = {"lower": "lower at step", "higher": "higher at step"}.get(c["decision"], "no significant difference")
            seg = line.split("(LSTM(update+tele) − LSTM(update)): ")[1].split(". ")[0]
            part = next(p for p in seg.split("; ") if p.startswith(word))
            assert f"{c['step']} (Δ " in part
    abl = results["sections"]["ablations"]
    step = max(c["step"] for c in abl["comparisons"] if c["step"] <= 100)
    for c in abl["comparisons"]:
        if c["step"] == step:
            assert c["ablation"] in lines[-1]


# -- the options of issue 13: per-horizon tuning, selection, transfer, divergence, targets --------
def test_quick_protocol_exercises_every_option():
    p, raw = load_protocol(QUICK_CONFIG)
    configs = {m: p.learned_config("uniform-small", m, 0) for m in p.methods}
    assert any(c.horizon == "log_uniform" and c.steps_min > 1 for c in configs.values())
    assert any(c.curriculum > 0 for c in configs.values()) and any(c.augment_scale > 1 for c in configs.values())
    assert any(c.late_weight > 0 for c in configs.values())
    assert any(c.learned.variant == "tele" and c.learned.base.name == "adam" for c in configs.values())
    assert any(c.learned.arch == "coordinatewise" for c in configs.values())
    assert any(p.selection("uniform-small", m) for m in p.methods)
    assert [p.tune_steps(f"adam(tuned@{h})") for h in p.steps] == p.steps and "adam(tuned)" not in p.baselines
    assert ["CW(update+tele)", "adam(tuned@*)"] in p.comparisons
    assert p.transfer and any(t.task.bias for t in p.transfer.targets.values()) and p.divergence_steps
    assert {t.rule for t in p.targets} == {"ci_below", "no_worse", "diverged_at_most"} and p.teleport_help


def test_baselines_tuned_per_reported_horizon_and_compared_at_their_own_step(run):
    from metatele.evaluation.tuning import DEFAULT_LRS, grid_search
    from metatele.optimizers.baselines import BaselineConfig
    from metatele.tasks.family import training_seeds

    out, _, results = run
    p, _ = load_protocol(QUICK_CONFIG)
    sec = results["sections"]["uniform-small"]
    for h in results["steps"]:
        e = sec["methods"][f"adam(tuned@{h})"]
        assert e["tuning"]["steps"] == h and e["tune_steps"] == h and e["config"]["lr"] == e["tuning"]["config"]["lr"]
    assert sec["methods"]["gd(tuned)"]["tuning"]["steps"] == p.tuning.steps and "tune_steps" not in sec["methods"]["gd(tuned)"]
    redo = grid_search(BaselineConfig(name="adam"), p.settings["uniform-small"].task,
                       training_seeds(p.tuning.seeds, p.tuning.seed_start), 100, lrs=DEFAULT_LRS)
    assert redo.lr == sec["methods"]["adam(tuned@100)"]["config"]["lr"]
    rows = [c for c in sec["comparisons"] if c.get("pair") == ["CW(update+tele)", "adam(tuned@*)"]]
    assert [(c["step"], c["b"]) for c in rows] == [(h, f"adam(tuned@{h})") for h in results["steps"]]
    text = (out / "RESULTS.md").read_text()
    assert "| CW(update+tele) − adam(tuned@*) | " in text and "adam(tuned@10): lr = " in text
    assert "(for 10 steps)" in text
    # a second per-horizon baseline (heavy ball): its lr and coefficient tuned for each step, in every section
    for name in ("uniform-small", "transfer-wider"):
        for h in results["steps"]:
            e = results["sections"][name]["methods"][f"momentum(tuned@{h})"]
            assert e["tuning"]["steps"] == h and e["config"]["name"] == "momentum"
            assert (e["config"]["lr"], e["config"]["momentum"]) == (e["tuning"]["config"]["lr"], e["tuning"]["config"]["momentum"])
    redo = grid_search(BaselineConfig(name="momentum"), p.settings["uniform-small"].task,
                       training_seeds(p.tuning.seeds, p.tuning.seed_start), 30, lrs=DEFAULT_LRS)
    assert (redo.lr, redo.config.momentum) == (sec["methods"]["momentum(tuned@30)"]["config"]["lr"],
                                               sec["methods"]["momentum(tuned@30)"]["config"]["momentum"])
    m10 = sec["methods"]["momentum(tuned@10)"]["config"]
    assert f"momentum(tuned@10): lr = {m10['lr']:.3g}, momentum = {m10['momentum']:g} (for 10 steps)" in text


def test_snapshot_selection_uses_validation_seeds_and_the_checkpoint_is_the_selected_snapshot(run):
    from metatele.studies.selection import validation_score
    from metatele.tasks.family import VALIDATION_SEED_OFFSET, validation_seeds

    out, _, results = run
    sec = results["sections"]["gaussian-small"]
    assert all("selected" not in i for i in sec["methods"]["LSTM(update)"]["meta_seeds_info"])  # no selection: none
    for info in sec["methods"]["CW(update+tele)"]["meta_seeds_info"]:
        sel = info["selected"]
        a, b = sel["validation_seeds"]
        assert VALIDATION_SEED_OFFSET <= a < b <= TEST_SEED_OFFSET  # never a test seed
        history = info["selection_history"]
        assert history[0]["meta_step"] == 0 and history[-1]["meta_step"] == info["meta_steps"]
        assert sel["score"] == min(h["score"] for h in history)
        assert sel["meta_step"] == next(h["meta_step"] for h in history if h["score"] == sel["score"])
        ck = load_checkpoint(info["checkpoint"])
        assert ck.provenance["selection"]["selected"] == sel
        c = evaluate(ck.optimizer, ck.config.task, list(validation_seeds(b - a)), sel["steps"])
        assert validation_score(c, sel["at_steps"]) == pytest.approx(sel["score"], rel=1e-5)
    text = (out / "RESULTS.md").read_text()
    last = " / ".join(["last"] * len(results["meta_seeds"]))  # LSTM(update): no selection on any meta-seed
    assert "selected meta-step (validation seeds)" in text and f"| {last} |" in text


def test_selection_never_evaluates_on_test_seeds(tmp_path, monkeypatch):
    from dataclasses import replace

    import metatele.meta.snapshots as selection  # meta-training's validation runs the evaluator here
    from metatele.studies.benchmark import Job, run_job

    p, _ = load_protocol(QUICK_CONFIG)
    seen = []
    real = selection.evaluate

    def spy(opt, task, seeds, steps, **kw):
        seen.extend(seeds)
        return real(opt, task, seeds, steps, **kw)

    monkeypatch.setattr(selection, "evaluate", spy)
    job = Job("uniform-small", "CW(update)", 0, p.learned_config("uniform-small", "CW(update)", 0),
              tmp_path / "ck.safetensors", p.selection("uniform-small", "CW(update)"))
    r = run_job(job, list(unseen_seeds(4)), [10], p.name)
    assert seen and max(seen) < TEST_SEED_OFFSET and r["info"]["selected"]["meta_step"] >= 0
    plain = Job("uniform-small", "CW(update)", 0, job.config, tmp_path / "plain.safetensors")
    assert plain.key == json.dumps(job.config.to_dict(), sort_keys=True) != job.key
    again = run_job(job, list(unseen_seeds(4)), [10], p.name, resume=True)  # the same selection: reused
    assert again["info"]["reused"] and again["info"]["selected"] == r["info"]["selected"]
    np.testing.assert_array_equal(again["curves"].loss, r["curves"].loss)
    other = Job(job.section, job.method, 0, job.config, job.checkpoint, replace(job.selection, every=1))
    assert not run_job(other, list(unseen_seeds(4)), [10], p.name, resume=True)["info"]["reused"]


def test_transfer_sections_run_the_checkpoints_on_other_tasks_against_baselines_tuned_there(run):
    from metatele.evaluation.tuning import DEFAULT_LRS, grid_search
    from metatele.optimizers.baselines import BaselineConfig
    from metatele.tasks.family import training_seeds

    out, _, results = run
    p, _ = load_protocol(QUICK_CONFIG)
    curves = load_curves(out / "curves.npz")
    source = results["sections"]["gaussian-small"]["methods"]
    for name, target in p.transfer_sections().items():
        sec = results["sections"][name]
        assert sec["kind"] == "transfer" and sec["from"] == "gaussian-small" and sec["task"]["dims"] == target.task.dims
        assert set(sec["skipped"]) == {"LSTM(update+tele)"} and "paper architecture" in sec["skipped"]["LSTM(update+tele)"]
        assert {m for m, e in sec["methods"].items() if e["kind"] == "learned"} == {"CW(update+tele)", "CW(update)"}
        for m in ("CW(update+tele)", "CW(update)"):
            infos = sec["methods"][m]["meta_seeds_info"]
            assert [i["checkpoint"] for i in infos] == [i["checkpoint"] for i in source[m]["meta_seeds_info"]]
            ck = load_checkpoint(infos[0]["checkpoint"], task=target.task)
            c = evaluate(ck.optimizer, target.task, list(unseen_seeds(5)), 10)
            np.testing.assert_allclose(c.loss, curves[name][m][f"seed{infos[0]['meta_seed']}"].loss[:11, :5], rtol=1e-5)
        redo = grid_search(BaselineConfig(name="gd"), target.task, training_seeds(p.tuning.seeds), p.tuning.steps,
                           lrs=DEFAULT_LRS)
        assert redo.lr == sec["methods"]["gd(tuned)"]["config"]["lr"]
        assert any(c["a"] == "CW(update+tele)" and c["b"] == "CW(update)" for c in sec["comparisons"])
    text = (out / "RESULTS.md").read_text()
    assert "## Transfer without retraining: gaussian [4, 6, 6, 6] with biases" in text
    assert "Not transferred: LSTM(update+tele) — the paper architecture" in text


def test_diverged_fractions_by_step_are_recorded_per_meta_seed_and_reported(run):
    out, _, results = run
    curves = load_curves(out / "curves.npz")
    for name, sec in results["sections"].items():
        for m, e in sec["methods"].items():
            saved = curves[name][m]
            flat = saved.get("combined") or saved["baseline"]
            assert e["diverged_by"] == {str(s): float(flat.diverged[s].mean()) for s in (30, 100)}
            if e["kind"] == "learned":
                assert e["diverged_by_meta_seed"] == [{str(s): float(saved[f"seed{i['meta_seed']}"].diverged[s].mean())
                                                       for s in (30, 100)} for i in e["meta_seeds_info"]]
    text = (out / "RESULTS.md").read_text()
    assert "| method | diverged by step 30 | diverged by step 100 |" in text


def test_targets_and_the_teleport_question_are_generated_from_the_recorded_numbers(run):
    from metatele.studies.protocol import Target
    from metatele.studies.targets import check_target, teleport_help_lines

    out, _, results = run
    text = (out / "RESULTS.md").read_text()
    assert "## Targets" in text and "## Does learning to teleport help?" in text
    p, _ = load_protocol(QUICK_CONFIG)
    settings = [n for n, s in results["sections"].items() if s["kind"] == "setting"]
    for t in p.targets:
        for name in t.sections or settings:
            sec = results["sections"][name]
            r = check_target(t, sec)
            assert (f"| {t.name} (" in text) and r is not None
            ms = sec["methods"]
            for row in r["steps"]:
                s = row["step"]
                if t.rule == "ci_below":
                    a = ms[t.a]["summary"]["at_step"][str(s)]["ci95"][1]
                    b = ms[t.b.replace("@*", f"@{s}")]["summary"]["at_step"][str(s)]["ci95"][0]
                    assert row["ok"] == (a < b)
                elif t.rule == "diverged_at_most":
                    assert row["ok"] == (ms[t.a]["diverged_by"][str(s)] <= t.at_most)
                else:
                    c = next(c for c in sec["comparisons"] if c["a"] == t.a and c["step"] == s
                             and c["b"] == t.b.replace("@*", f"@{s}"))
                    assert row["ok"] == (c["decision"] != "higher")
            assert f"| {sec['label']} | {'**met**' if r['met'] else '**missed**'} |" in text
    assert check_target(Target(name="x", a="nope", b="gd(tuned)", steps=[10]), results["sections"][settings[0]]) is None
    lines = teleport_help_lines(results)
    assert lines and all(f"- {line}" in text for line in lines)
    assert len(lines) == len([s for s in results["sections"].values() if s["kind"] != "ablations"])


def test_new_protocol_keys_fail_with_the_field_named(capsys):
    for bad, field in (("divergence_steps=[1000]", "divergence_steps"),
                       ("targets=[{a: CW(update), b: nope, steps: [10]}]", "targets"),
                       ("targets=[{a: CW(update), b: CW(update+tele), steps: [10], rule: best}]", "rule"),
                       ("transfer.setting=nowhere", "transfer.setting"),
                       ("comparisons=[[CW(update), gd(tuned@*)]]", "comparisons"),
                       ("baselines.adam(tuned).tune=false", "tune_horizons"),
                       ("methods.CW(update).selection.every=0", "selection.every")):
        assert main(["--quick", "--dry-run", "--set", bad]) == 2, bad
        assert field in capsys.readouterr().err, bad
    assert main(["--quick", "--dry-run"]) == 0
    assert "transfer-biases: baselines" in capsys.readouterr().out
    p, _ = load_protocol(QUICK_CONFIG)
    assert p.method_names(["adam(tuned)", "gd(tuned)"]) == ["adam(tuned@10)", "adam(tuned@30)", "adam(tuned@100)", "gd(tuned)"]


def test_shipping_picks_the_meta_seed_on_validation_scores_and_writes_checkpoints_with_manifests(run, tmp_path):
    out, _, results = run
    ship = tmp_path / "checkpoints"
    cmd = [sys.executable, "experiments/ship_benchmark.py", "--results", str(out / "results.json"), "--out", str(ship),
           "--settings", "gaussian-small", "uniform-small", "--methods", "CW(update+tele)", "CW(update)", "adam+CW(tele)"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    for setting in ("gaussian-small", "uniform-small"):
        methods = results["sections"][setting]["methods"]
        lead = methods["CW(update+tele)"]["meta_seeds_info"]
        best = min(lead, key=lambda i: i["selected"]["score"])["meta_seed"]  # validation scores only
        for m, stem in (("CW(update+tele)", "cw_update_tele"), ("CW(update)", "cw_update"),
                        ("adam+CW(tele)", "adam_cw_tele")):
            infos = methods[m]["meta_seeds_info"]
            k = [i["meta_seed"] for i in infos].index(best)  # the twins share the chosen meta-seed
            dst = ship / f"benchmark_{stem}_{setting}.safetensors"
            assert dst.read_bytes() == Path(infos[k]["checkpoint"]).read_bytes()
            manifest = json.loads((ship / f"benchmark_{stem}_{setting}.manifest.json").read_text())
            assert manifest["extra"]["benchmark"]["meta_seed"] == best
            assert manifest["metrics"]["this_checkpoint"] == methods[m]["meta_seeds"][k]
            assert manifest["files"][0]["sha256"] == hashlib.sha256(dst.read_bytes()).hexdigest()
            assert manifest["seeds"]["train"] == infos[k]["train_seeds"]
            assert f"--set meta_seeds=[{best}]" in manifest["commands"][0]  # the rerun that makes it
            assert manifest["headline"]["mean_log10_loss_at"] == {
                s: v["mean"] for s, v in methods[m]["meta_seeds"][k]["at_step"].items()}
            assert manifest["config"] == load_checkpoint(dst).manifest["config"]
            assert manifest["check"]["steps"] == 10 and rerun_check(dst, manifest["check"]) == pytest.approx(
                manifest["headline"]["mean_log10_loss_at"]["10"], abs=1e-6)  # the check reproduces the headline
            assert load_checkpoint(dst).config.learned.variant == methods[m]["config"]["learned"]["variant"]
    bad = subprocess.run([*cmd[:3], str(tmp_path / "none.json"), *cmd[4:]], capture_output=True, text=True,
                         cwd=Path(__file__).parents[1])
    assert bad.returncode == 2 and "metatele benchmark" in bad.stderr


def test_a_pretrained_method_is_evaluated_from_its_checkpoints_as_they_are(run, tmp_path):
    out, _, results = run
    pattern = str(out / "checkpoints" / "gaussian-small" / "CW-update+tele" / "seed{seed}.safetensors")
    before = {k: Path(pattern.format(seed=k)).read_bytes() for k in (0, 1)}
    argv = ["--quick", "--out", str(tmp_path), "--no-progress", "--set", f"methods.shipped={{pretrained: '{pattern}'}}",
            "--settings", "gaussian-small", "--methods", "shipped", "adam(tuned)", "--ablations", "none", *TWO_SEEDS]
    threads = torch.get_num_threads()
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    again = json.loads((tmp_path / "results.json").read_text())
    shipped = again["sections"]["gaussian-small"]["methods"]["shipped"]
    trained = results["sections"]["gaussian-small"]["methods"]["CW(update+tele)"]
    assert [i["checkpoint"] for i in shipped["meta_seeds_info"]] == [pattern.format(seed=k) for k in (0, 1)]
    assert all(i["pretrained"] and i["reused"] for i in shipped["meta_seeds_info"])
    unnamed = lambda summary: {k: v for k, v in summary.items() if k != "name"}  # noqa: E731
    assert unnamed(shipped["summary"]) == unnamed(trained["summary"])  # the same optimizers on the same test seeds
    assert {k: Path(pattern.format(seed=k)).read_bytes() for k in (0, 1)} == before  # never rewritten
    assert not (tmp_path / "checkpoints" / "gaussian-small" / "shipped").exists()


def quick_pretrained_results(argv: list[str], out: Path) -> dict:
    """``metatele benchmark ARGV`` (a quick protocol writing to ``out``), torch's thread count kept;
    its results.json."""
    threads = torch.get_num_threads()
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads((out / "results.json").read_text())


def test_a_checkpoint_of_metatele_train_that_selected_a_snapshot_is_evaluated_as_pretrained(tmp_path):
    """A long run's checkpoint (``metatele train`` with validation) records the snapshot it selected;
    the benchmark evaluates it as it is and reports that meta-step (it failed on that record)."""
    run = {"task": {"dims": [4, 6, 6, 6], "distribution": "gaussian"},
           "learned": {"variant": "update", "arch": "coordinatewise", "coordinatewise": {"hidden": 8, "layers": 1}},
           "trajectories": 1000, "max_meta_steps": 4, "steps": 12, "unroll": 3, "batch_size": 4,
           "validation": {"every": 2, "seeds": 3, "steps": 6, "at_steps": [3, 6]}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(run))
    ck = tmp_path / "long_runs" / "run" / "checkpoint.safetensors"
    assert cli.main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(ck.parent), "--no-progress",
                     "--wandb", "disabled"]) == 0
    selected = load_checkpoint(ck).provenance["selection"]["meta_step"]
    argv = ["--quick", "--out", str(tmp_path / "b"), "--no-progress", "--set", f"methods.long={{pretrained: {{0: '{ck}'}}}}",
            "--set", f"methods.init={{pretrained: {{0: '{ck}'}}, initialisation: true}}",
            "--set", "meta_seeds=[0]", "--settings", "gaussian-small", "--methods", "long", "init", "--ablations", "none"]
    results = quick_pretrained_results(argv, tmp_path / "b")
    info = results["sections"]["gaussian-small"]["methods"]["long"]["meta_seeds_info"][0]
    assert info["pretrained"] and info["selected"]["meta_step"] == selected
    # its initialisation: meta-step 0 of the same run, rebuilt from the checkpoint's config
    init = results["sections"]["gaussian-small"]["methods"]["init"]
    assert init["meta_seeds_info"][0]["initialisation"] and init["meta_seeds_info"][0]["meta_steps"] == 0
    seeds = range(results["test_seeds"]["start"], results["test_seeds"]["start"] + results["test_seeds"]["count"])
    task = TaskConfig(**{**results["sections"]["gaussian-small"]["task"], "dims": tuple(results["sections"]["gaussian-small"]["task"]["dims"])})
    direct = evaluate(build_engine(load_checkpoint(ck).config, device="cpu").optimizer.eval(), task, seeds, 10)
    assert init["summary"]["at_step"]["10"]["mean"] == pytest.approx(float(np.log10(direct.loss[10]).mean()), abs=1e-5)
    assert init["summary"]["at_step"]["10"]["mean"] != pytest.approx(
        results["sections"]["gaussian-small"]["methods"]["long"]["summary"]["at_step"]["10"]["mean"])
    assert f"| {selected} |" in (tmp_path / "b" / "RESULTS.md").read_text()
    # one method, not among the transfer methods: its setting has a figure, the empty transfer sections none
    assert list(results["figures"]) == ["gaussian-small"]
    # shipped into a package folder with its test-seed numbers and the commands that made it
    ship = subprocess.run([sys.executable, "experiments/ship_benchmark.py", "--results", str(tmp_path / "b" / "results.json"),
                           "--settings", "gaussian-small", "--to-package", "long=my-opt", "--package-dir", str(tmp_path / "pkg")],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert ship.returncode == 0, ship.stderr
    dst = tmp_path / "pkg" / "my-opt.safetensors"
    assert dst.read_bytes() == ck.read_bytes()
    manifest = json.loads((tmp_path / "pkg" / "my-opt.manifest.json").read_text())
    assert manifest["commands"][:2] == ["python experiments/long_runs/run.py train run  # repeated until it has reached its budget",
                                        results["command"]]
    assert manifest["headline"]["seeds"] == "test" and rerun_check(dst, manifest["check"]) == pytest.approx(
        manifest["headline"]["mean_log10_loss_at"]["10"], abs=1e-6)
    wrong = subprocess.run([*ship.args[:-4], "--to-package", "adam(tuned@3)=x", "--package-dir", str(tmp_path / "pkg")],
                           capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert wrong.returncode == 2 and "METHOD a pretrained method of gaussian-small" in wrong.stderr


def test_a_warm_started_checkpoint_is_reported_with_its_sources_meta_steps(tmp_path):
    """A run warm-started from another's training state (``init_from``) counts its own meta-steps
    from 0; the benchmark reports the total, and the selected meta-step counted from the source's start."""
    run = {"task": {"dims": [4, 6, 6, 6], "distribution": "gaussian"},
           "learned": {"variant": "update", "arch": "coordinatewise", "coordinatewise": {"hidden": 8, "layers": 1}},
           "trajectories": 1000, "max_meta_steps": 4, "steps": 12, "unroll": 3, "batch_size": 4,
           "validation": {"every": 2, "seeds": 3, "steps": 6, "at_steps": [3, 6]}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(run))
    first = tmp_path / "first"
    assert cli.main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(first), "--no-progress",
                     "--wandb", "disabled", "--save-every", "2"]) == 0
    state = sorted((first / "training_state").glob("state-*.safetensors"))[-1]
    ck = tmp_path / "second" / "checkpoint.safetensors"
    assert cli.main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(ck.parent), "--no-progress",
                     "--wandb", "disabled", "--set", f"init_from={state}", "--set", "max_meta_steps=6",
                     "--set", "train_seed_start=5000", "--set", "learned.coordinatewise.update_safeguard=true"]) == 0
    prov = load_checkpoint(ck).provenance
    assert prov["meta_steps"] == 6 and prov["init_from"]["meta_steps"] == 4
    argv = ["--quick", "--out", str(tmp_path / "b"), "--no-progress", "--set", f"methods.long={{pretrained: {{0: '{ck}'}}}}",
            "--set", "meta_seeds=[0]", "--settings", "gaussian-small", "--methods", "long", "--ablations", "none"]
    results = quick_pretrained_results(argv, tmp_path / "b")
    info = results["sections"]["gaussian-small"]["methods"]["long"]["meta_seeds_info"][0]
    assert info["meta_steps"] == 10 and info["selected"]["meta_step"] == 4 + prov["selection"]["meta_step"]
    assert info["train_seconds"] == pytest.approx(prov["train_seconds"] + prov["init_from"]["train_seconds"])


def test_a_pretrained_method_with_a_missing_checkpoint_fails_before_any_work(tmp_path, capsys):
    argv = ["--quick", "--out", str(tmp_path), "--no-progress", "--set",
            f"methods.shipped={{pretrained: '{tmp_path}/none{{seed}}.safetensors'}}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "methods.shipped.pretrained" in err and "none0.safetensors" in err
    assert not (tmp_path / "results.json").exists()


def test_a_pretrained_method_may_map_each_meta_seed_to_its_file(tmp_path):
    from metatele.release.pretrained import pretrained_path
    files = {k: tmp_path / f"run{k}" / "checkpoint.safetensors" for k in (0, 1)}
    for f in files.values():
        f.parent.mkdir()
        shutil.copy(pretrained_path("cw-update-gaussian"), f)
    spec = "{" + ", ".join(f"{k}: '{f}'" for k, f in files.items()) + "}"
    protocol, _ = load_protocol(QUICK_CONFIG, [f"methods.shipped={{pretrained: {spec}}}"])
    assert [protocol.pretrained("shipped", k) for k in (0, 1)] == [files[0], files[1]]
    with pytest.raises(ConfigError, match=r"methods.shipped.pretrained: names no checkpoint for meta-seed 2"):
        protocol.pretrained("shipped", 2)
    assert not protocol.initialisation("shipped")
    for bad, why in ((f"methods.shipped={{pretrained: {spec}, initialisation: 1}}", "must be true or false"),
                     ("methods.CW(update).initialisation=true", "unknown config key 'initialisation'")):
        with pytest.raises(ConfigError, match=why):
            load_protocol(QUICK_CONFIG, [bad])[0].initialisation(bad.split("=")[0].split(".")[1])
    with pytest.raises(ConfigError, match=r"methods.shipped.pretrained.0: must be a checkpoint path"):
        load_protocol(QUICK_CONFIG, ["methods.shipped={pretrained: {0: 7}}"])
    with pytest.raises(ConfigError, match=r"methods.shipped.pretrained: a mapping's keys are meta-seeds \(integers\), got \['0'\]"):
        load_protocol(QUICK_CONFIG, [f"methods.shipped={{pretrained: {{'0': '{files[0]}'}}}}"])


@pytest.mark.slow  # two grid searches of 300 steps (≈ 10 s); test_protocol_tune_is_the_benchmarks_tuning covers the call
def test_the_protocols_pasted_rates_are_its_own_tuned_rates():
    protocol, _ = load_protocol(RETRAIN_CONFIG)
    for setting in ("gaussian-20", "uniform-20"):
        tuned = protocol.tune("adam(tuned@300)", protocol.settings[setting].task).config.lr
        base = protocol.learned_config(setting, "adam+CW(tele)", 0).learned.base
        assert base.name == "adam" and base.lr == tuned
        if setting == "gaussian-20":  # m1 starts as Adam at the same rate
            assert protocol.learned_config(setting, "CW(update+tele)", 0).learned.coordinatewise.lr == tuned


def test_protocol_tune_is_the_benchmarks_tuning():
    protocol, _ = load_protocol(QUICK_CONFIG, ["tuning.seeds=2", "tuning.steps=5"])
    task = next(iter(protocol.settings.values())).task
    tuned = protocol.tune("gd(tuned)", task)
    assert tuned.config.name == "gd" and tuned.config.lr in [g["lr"] for g in tuned.grid]
    with pytest.raises(ConfigError, match=r"baselines\.gd\(lr=3e-4\): is not tuned"):
        protocol.tune("gd(lr=3e-4)", task)


def test_speed_up_rows_read_the_curves_and_reach_the_report(run):
    from metatele.studies.aggregate import mean_log10, speedups
    out, _, results = run
    curves = load_curves(out / "curves.npz")
    for name, sec in results["sections"].items():
        if sec["kind"] != "setting":
            continue
        flat = {m: c.get("combined") or c.get("baseline") for m, c in curves[name].items()}
        rows = speedups(flat, "CW-mix(update+tele)", ["adam(tuned@*)", "momentum(tuned@*)"], [30, 100])
        assert len(rows) == len(sec["speedup"]) == 2
        for r, saved in zip(rows, sec["speedup"]):
            assert (r["step"], r["baseline"], r["reached_at"]) == (saved["step"], saved["baseline"], saved["reached_at"])
            assert r["target_log10"] == pytest.approx(saved["target_log10"])
        for r in rows:
            best = min(float(mean_log10(flat[f"{b}(tuned@{r['step']})"])[r["step"]]) for b in ("adam", "momentum"))
            assert r["target_log10"] == pytest.approx(best)
            ours = mean_log10(flat["CW-mix(update+tele)"])
            if r["reached_at"] is not None:
                assert ours[r["reached_at"]] <= best and (ours[: r["reached_at"]] > best).all()
                assert r["speedup"] == (pytest.approx(r["step"] / r["reached_at"]) if r["reached_at"] else None)
            else:
                assert (ours > best).all()
    assert "Speed-up (the field's headline metric)" in (out / "RESULTS.md").read_text()
