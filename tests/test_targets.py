"""The generated verdicts of the benchmark report (metatele.studies.targets), on hand-made statistics."""
from __future__ import annotations

from metatele.studies.protocol import Target
from metatele.studies.targets import check_target, divergence_table, teleport_help_lines


def _stat(mean, lo, hi, diverged=0.0):
    return {"mean": mean, "ci95": [lo, hi], "n": 100, "n_diverged": int(100 * diverged), "diverged_fraction": diverged}


def _entry(at, diverged_by=None, per_seed=None):
    e = {"kind": "learned", "summary": {"at_step": {str(s): v for s, v in at.items()}, "diverged_fraction": 0.0}}
    if diverged_by is not None:
        e["diverged_by"] = {str(s): v for s, v in diverged_by.items()}
        e["diverged_by_meta_seed"] = per_seed or []
    return e


def _cmp(a, b, step, decision, diff=-0.1):
    return {"a": a, "b": b, "step": step, "decision": decision, "mean_diff": diff, "ci95": [diff - 0.05, diff + 0.05],
            "test": "t", "p": 0.001, "p_value": 0.001, "wins": 70, "n_seeds": 100, "diverged_a": 0, "diverged_b": 0}


SECTION = {
    "kind": "setting", "label": "gaussian [20, 20, 20, 20]",
    "methods": {
        "L": _entry({10: _stat(-1.0, -1.1, -0.9), 30: _stat(-2.0, -2.1, -1.9), 1000: _stat(-7.2, -7.3, -7.1)},
                    diverged_by={1000: 0.03}, per_seed=[{"1000": 0.01}, {"1000": 0.05}, {"1000": 0.03}]),
        "adam@10": _entry({10: _stat(-0.5, -0.6, -0.4)}),
        "adam@30": _entry({30: _stat(-2.05, -2.2, -1.95)}),
        "adam@1000": _entry({1000: _stat(-7.1, -7.2, -7.0)}),
        "U": _entry({10: _stat(-0.95, -1.05, -0.85)}),
    },
    "comparisons": [_cmp("L", "adam@1000", 1000, "higher", 0.1), _cmp("L", "U", 10, "lower"),
                    _cmp("L", "U", 30, "no significant difference", 0.01)],
}
for c in SECTION["comparisons"][1:]:
    c["pair"] = ["L", "U"]


def test_ci_below_is_met_where_the_intervals_separate_and_states_by_how_much_it_is_missed():
    r = check_target(Target(name="t", a="L", b="adam@*", steps=[10, 30]), SECTION)
    assert [x["ok"] for x in r["steps"]] == [True, False] and not r["met"]
    assert "CIs apart by 0.300" in r["steps"][0]["text"]
    assert "missed by 0.300 log10" in r["steps"][1]["text"]  # −1.9 − (−2.2)


def test_no_worse_accepts_a_significant_rise_only_at_the_float32_floor():
    t = Target(name="t", a="L", b="adam@*", steps=[1000], rule="no_worse", floor=-7.0)
    r = check_target(t, SECTION)
    assert r["met"] and "float32 floor" in r["steps"][0]["text"]
    r = check_target(Target(name="t", a="L", b="adam@*", steps=[1000], rule="no_worse", floor=-8.0), SECTION)
    assert not r["met"] and "missed by Δ 0.100" in r["steps"][0]["text"]


def test_diverged_at_most_uses_the_fraction_by_the_step_and_shows_each_meta_seed():
    r = check_target(Target(name="t", a="L", steps=[1000], rule="diverged_at_most", at_most=0.01), SECTION)
    assert not r["met"] and "3% diverged (limit 1%) (meta-seeds 1% / 5% / 3%), missed by 2%" in r["steps"][0]["text"]
    assert check_target(Target(name="t", a="L", steps=[1000], rule="diverged_at_most", at_most=0.05), SECTION)["met"]
    assert "| L | 3%<br>(1% / 5% / 3%) |" in divergence_table(SECTION)


def test_teleport_verdict_names_the_steps_where_it_does_not_help():
    results = {"protocol": {"teleport_help": [{"a": "L", "b": "U", "what": "the learned teleport"}]},
               "sections": {"s": SECTION}}
    (line,) = teleport_help_lines(results)
    assert line.startswith("**gaussian [20, 20, 20, 20]**: learning to teleport helps in 1 of 2 step-comparisons.")
    assert "The learned teleport (L − U) helps at step 10 only: lower at step 10 (Δ −0.100 [−0.150, −0.050]" in line
    assert "it does not help at step 30 (no significant difference, Δ +0.010" in line
