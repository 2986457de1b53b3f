"""`metatele benchmark` with a digits transfer target: the checkpoints and the baselines tuned there
run on the cross-entropy, and every method's validation accuracy reaches results.json, curves.npz
and the report (quick scale, one gaussian-small method and two meta-seeds)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from metatele import cli
from metatele.configs import from_dict
from metatele.evaluation.evaluate import evaluate
from metatele.evaluation.format import cell
from metatele.evaluation.stats import mean_ci
from metatele.optimizers.baselines import BaselineConfig
from metatele.studies.aggregate import load_curves
from metatele.tasks.family import TaskConfig, unseen_seeds

DIGITS = {"family": "digits", "dims": [100, 64, 8, 8, 10], "bias": True}
STEPS = (10, 30)
ARGV = ["--quick", "--no-progress", "--settings", "gaussian-small", "--methods", "CW(update+tele)", "adam(tuned)",
        "--ablations", "none", "--set", "meta_seeds=[0, 1]", "--set", "test_seeds=6", "--set", "steps=[10, 30]",
        "--set", "divergence_steps=[30]", "--set", "speedup=[]",
        "--set", "transfer={setting: gaussian-small, methods: [CW(update+tele)], targets: {digits: {task: "
                 "{family: digits, dims: [100, 64, 8, 8, 10], bias: true}}}}",
        "--set", "targets=[{name: below Adam on digits, a: CW(update+tele), b: adam(tuned@*), steps: [10, 30], "
                 "rule: ci_below, sections: [transfer-digits]}]"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_digits")
    threads = torch.get_num_threads()
    try:
        assert cli.main(["benchmark", "--out", str(out), *ARGV]) == 0
    finally:
        torch.set_num_threads(threads)
    return out, json.loads((out / "results.json").read_text())


def test_every_method_on_digits_records_its_validation_accuracy_from_its_curves(run):
    out, results = run
    sec = results["sections"]["transfer-digits"]
    assert sec["kind"] == "transfer" and sec["task"]["family"] == "digits"
    assert set(sec["methods"]) == {"CW(update+tele)", "adam(tuned@10)", "adam(tuned@30)"}
    curves = load_curves(out / "curves.npz")["transfer-digits"]
    for m, e in sec["methods"].items():
        flat = curves[m].get("combined") or curves[m]["baseline"]
        assert set(flat.metrics) == {"val_loss", "val_accuracy"}
        for s in STEPS:
            st = e["metrics"]["val_accuracy"][str(s)]
            mean, lo, hi = mean_ci(flat.metrics["val_accuracy"][s])
            assert st["mean"] == pytest.approx(mean) and st["ci95"] == pytest.approx([lo, hi])
            assert 0 <= lo <= mean <= hi <= 1 and st["n"] == e["summary"]["at_step"][str(s)]["n"]
    # a learned method's accuracy is, per test seed, the mean over its meta-seeds (each one's kept too)
    cw = curves["CW(update+tele)"]
    np.testing.assert_allclose(cw["combined"].metrics["val_accuracy"],
                               (cw["seed0"].metrics["val_accuracy"] + cw["seed1"].metrics["val_accuracy"]) / 2)
    per_seed = sec["methods"]["CW(update+tele)"]["metrics_meta_seeds"]
    assert [x["val_accuracy"]["30"]["mean"] for x in per_seed] == pytest.approx(
        [float(np.nanmean(cw[f"seed{k}"].metrics["val_accuracy"][30])) for k in (0, 1)])
    # regression sections have no validation data, so no such record
    assert not any("metrics" in e for e in results["sections"]["gaussian-small"]["methods"].values())


def test_the_baselines_tuned_on_digits_step_on_its_cross_entropy(run):
    out, results = run
    e = results["sections"]["transfer-digits"]["methods"]["adam(tuned@30)"]
    saved = load_curves(out / "curves.npz")["transfer-digits"]["adam(tuned@30)"]["baseline"]
    redo = evaluate(from_dict(BaselineConfig, e["config"]), TaskConfig(**DIGITS), list(unseen_seeds(6)), max(STEPS))
    np.testing.assert_allclose(saved.loss, redo.loss, rtol=1e-6)
    np.testing.assert_allclose(saved.metrics["val_accuracy"], redo.metrics["val_accuracy"])
    assert saved.loss[0].mean() == pytest.approx(np.log(10), rel=0.2)  # a fresh 10-class classifier's cross-entropy


def test_the_report_shows_the_digits_task_its_target_and_a_validation_accuracy_table(run):
    out, results = run
    text = (out / "RESULTS.md").read_text()
    sec = results["sections"]["transfer-digits"]
    assert "## Transfer without retraining: digits [100, 64, 8, 8, 10] with biases" in text
    assert "task family digits, dims [100, 64, 8, 8, 10], with biases" in text and "teleport batch 9 images" in text
    assert text.count("| method | val accuracy @ 10 | val accuracy @ 30 |") == 1
    for m, e in sec["methods"].items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {m} | ") and "val accuracy" not in line
                   and re.search(r"\| \*?\*?0\.\d{3} \[", line))
        for s in STEPS:
            assert cell(e["metrics"]["val_accuracy"][str(s)], ".3f") in row
    assert re.search(r"\| below Adam on digits \(.*\) \| digits \[100, 64, 8, 8, 10\] with biases \| \*\*(met|missed)\*\* \|",
                     text)
    before = text
    assert cli.main(["benchmark", "--quick", "--out", str(out), "--render-only"]) == 0
    assert (out / "RESULTS.md").read_text() == before  # the table is generated from results.json
