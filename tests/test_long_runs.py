"""Long meta-training runs: budgets, validation with the best and the averaged snapshot, the task
mixture of a generalist, and bitwise resume of all of it."""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from metatele import cli
from metatele import configs as configs_mod
from metatele.configs import ConfigError
from metatele.meta.checkpointer import TrainingCheckpointer
from metatele.meta.config import MetaTrainConfig
from metatele.meta import snapshots as snap_mod
from metatele.meta.mixture import MixtureEngine, build_engine
from metatele.meta.state import load_training_state, state_files
from metatele.release.checkpoint import CheckpointError, load_checkpoint
from metatele.meta.train import TrainingFailed, failure, meta_train
from metatele.tasks.family import TaskConfig
from metatele.tasks.mixture import TaskMix, architecture_key

from helpers import same_parameters, tiny

pytestmark = pytest.mark.usefixtures("one_thread")


def cw(**kw) -> MetaTrainConfig:
    """A tiny coordinatewise update+tele run with validation every 3 meta-steps and an average."""
    base = dict(tiny(**{"learned.arch": "coordinatewise", "trajectories": 1000, "max_meta_steps": 9,
                        "validation.every": 3, "validation.seeds": 3, "validation.steps": 6,
                        "validation.at_steps": [3, 6], "validation.average": 0.5,
                        "learned.coordinatewise.lr": 0.05}))
    base["learned"].pop("lstm", None)
    base["learned"].get("teleport", {}).pop("eps", None)
    for k, v in kw.items():
        node, parts = base, k.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    if base["learned"]["variant"] == "update":  # m2's rate: refused by a run without m2
        base.pop("lr_teleport", None)
    return MetaTrainConfig.from_dict(base)


class Stop(Exception):
    pass


def interrupted_then_resumed(cfg: MetaTrainConfig, tmp_path, at: int):
    """Run ``cfg`` saving the training state at meta-step ``at`` and dying there; resume it from
    the file in a fresh engine and finish. Returns the finished engine."""
    saver = TrainingCheckpointer(cfg, tmp_path, every=at, handle_signals=False)

    def callback(engine, metrics):
        saver(engine, metrics)
        if engine.meta_step_count == at:
            raise Stop

    with pytest.raises(Stop):
        meta_train(cfg, progress=False, callback=callback)
    engine, doc = load_training_state(tmp_path)
    assert doc["meta_step"] == at
    meta_train(cfg, progress=False, engine=engine)
    return engine


def assert_same_snapshots(a, b) -> None:
    sa, sb = a.snapshots, b.snapshots
    clockless = lambda h: [{k: v for k, v in r.items() if k != "train_seconds"} for r in h]  # noqa: E731
    assert clockless(sa.history) == clockless(sb.history) and sa.trajectory_steps == sb.trajectory_steps
    assert all(torch.equal(x, y) for x, y in zip(sa.average, sb.average))
    assert sa.best["meta_step"] == sb.best["meta_step"] and sa.best["kind"] == sb.best["kind"]
    assert same_parameters(sa.best["state"], sb.best["state"])
    assert same_parameters(a, b)


# -- budgets ---------------------------------------------------------------------------------------
def test_a_meta_step_budget_ends_the_run_there_and_is_the_plan():
    cfg = cw(**{"validation.every": 0})
    assert cfg.meta_steps == 9
    result = meta_train(cfg, progress=False)
    assert result.meta_steps == 9 and len(result.history) == 9


def test_budgets_and_validation_options_are_checked():
    for key, value in [("max_meta_steps", 0), ("max_seconds", math.inf), ("validation.average", 1.0),
                       ("validation.at_steps", [7]), ("validation.every", -1)]:
        with pytest.raises(ConfigError, match=key.split(".")[-1]):
            cw(**{key: value})


# -- validation and snapshots ----------------------------------------------------------------------
def test_validation_keeps_the_best_of_current_and_average_and_selects_it():
    result = meta_train(cw(), progress=False)
    snap = result.snapshots
    assert [r["meta_step"] for r in snap.history] == [0, 3, 6, 9]
    scores = [(r[k]["score"], r["meta_step"], k) for r in snap.history for k in ("current", "average")]
    best = min(scores)
    assert (snap.best["score"], snap.best["meta_step"], snap.best["kind"]) == best
    assert snap.trajectory_steps == 9 * 4 * 3  # B × unroll per meta-step


def test_the_average_is_an_exponential_moving_average_of_the_meta_parameters():
    cfg = cw(**{"max_meta_steps": 2, "validation.every": 100})
    engine = build_engine(cfg)
    params = engine.meta_parameters
    expected = [p.detach().clone() for p in params]
    def callback(eng, metrics):
        for e, p in zip(expected, params):
            e.mul_(0.5).add_(0.5 * p.detach())
    meta_train(cfg, progress=False, engine=engine, callback=callback)
    assert all(torch.allclose(a, e, rtol=0, atol=1e-12) for a, e in zip(engine.snapshots.average, expected))
    avg = engine.snapshots.averaged_optimizer(engine.optimizer)
    named = dict(avg.named_parameters())
    assert all(torch.equal(named[n], a) for n, a in zip(engine.snapshots.names, engine.snapshots.average))


def test_selected_optimizer_holds_the_best_snapshot():
    result = meta_train(cw(), progress=False)
    chosen = result.selected_optimizer()
    assert same_parameters(chosen.state_dict(), result.snapshots.best["state"])
    last = same_parameters(chosen.state_dict(), result.optimizer.state_dict())
    assert last == (result.snapshots.best["meta_step"] == 9 and result.snapshots.best["kind"] == "current")


def straight_and_resumed(cfg: MetaTrainConfig, tmp_path, at: int):
    """The engines of an uninterrupted run of ``cfg`` and of one stopped at ``at`` and resumed;
    their snapshots and meta-parameters are checked equal bit for bit."""
    straight = build_engine(cfg)
    meta_train(cfg, progress=False, engine=straight)
    resumed = interrupted_then_resumed(cfg, tmp_path, at)
    assert_same_snapshots(straight, resumed)
    return straight, resumed


def test_validation_and_snapshots_resume_bit_for_bit(tmp_path):
    straight_and_resumed(cw(), tmp_path, at=4)


# -- the task mixture --------------------------------------------------------------------------------
REFERENCE = TaskConfig(dims=[20, 20, 20, 20], distribution="gaussian")


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_the_mixture_draws_the_same_architectures_from_its_seed_and_never_a_held_out_one(seed):
    mix = TaskMix(pool=12, held_out=3, seed=seed)
    train, held = mix.training_architectures(REFERENCE), mix.held_out_architectures(REFERENCE)
    assert [t.dims for t in train] == [t.dims for t in TaskMix(pool=12, held_out=3, seed=seed).training_architectures(REFERENCE)]
    assert train[0] is REFERENCE and len(train) == 13 and len(held) == 3
    keys = [architecture_key(t) for t in train]
    assert len(set(keys)) == len(keys)
    assert not set(keys) & {architecture_key(t) for t in held}
    for t in train[1:] + held:
        assert 2 <= len(t.weight_shapes) <= 5 and all(8 <= w <= 64 for w in t.widths)
        assert t.non_symmetric_pairs() == []  # every teleport is a symmetry of the loss


def test_a_larger_pool_keeps_the_smaller_pools_architectures_and_the_held_out_ones():
    small, large = TaskMix(pool=4), TaskMix(pool=10)
    assert [t.dims for t in large.training_architectures(REFERENCE)[:5]] == \
        [t.dims for t in small.training_architectures(REFERENCE)]
    assert [t.dims for t in large.held_out_architectures(REFERENCE)] == \
        [t.dims for t in small.held_out_architectures(REFERENCE)]


def mixture(**kw) -> MetaTrainConfig:
    return cw(**{"mix": {"pool": 2, "held_out": 1, "widths": [4, 8], "layers": [2, 3], "validate_on": 1},
                 "max_meta_steps": 8, "validation.every": 4, **kw})


def test_mixture_groups_take_turns_on_disjoint_seeds_with_one_adam_state():
    cfg = mixture(**{"validation.every": 0})
    engine = build_engine(cfg)
    assert isinstance(engine, MixtureEngine) and len(engine.groups) == 3
    result = meta_train(cfg, progress=False, engine=engine)
    assert [m["group"] for m in result.history] == [0, 1, 2, 0, 1, 2, 0, 1]
    seeds = [set(e.trajectories.seeds.tolist()) for e in engine.groups]
    assert not (seeds[0] & seeds[1]) and not (seeds[1] & seeds[2]) and not (seeds[0] & seeds[2])
    assert all(e.meta_opt is engine.meta_opt for e in engine.groups)
    step = next(iter(engine.meta_opt.state.values()))["step"]
    assert int(step) == 8  # every meta-step updated the one shared Adam state


def test_a_mixture_is_all_dead_only_when_its_last_meta_steps_were():
    """One architecture whose every trajectory diverges (simulated on its own counter) does not
    make a mixture run that ends on a healthy group 'end while every trajectory was diverging';
    the streak counts the mixture's last meta-steps, and resets on a finite one."""
    def dead_on_every_step(engine):
        step = engine.meta_step

        def wrapped():
            metrics = step()
            engine.all_dead_streak += 1  # as if each of its meta-steps had no finite trajectory
            return metrics
        engine.meta_step = wrapped

    for steps, expected in ((9, 0), (8, 1)):  # the 9th meta-step is group 2's, the 8th group 1's
        cfg = mixture(**{"validation.every": 0, "max_meta_steps": steps})
        engine = build_engine(cfg)
        dead_on_every_step(engine.groups[1])
        if expected:  # the run did end on a meta-step with no finite trajectory: it fails
            with pytest.raises(TrainingFailed, match="ended while every trajectory was diverging"):
                meta_train(cfg, progress=False, engine=engine)
        else:
            meta_train(cfg, progress=False, engine=engine)
        assert engine.groups[1].all_dead_streak == 1 and engine.all_dead_streak == expected
        assert (failure(engine) is None) == (expected == 0)


def test_a_mixture_run_resumes_bit_for_bit(tmp_path):
    straight, resumed = straight_and_resumed(mixture(), tmp_path, at=5)
    assert all(torch.equal(x, y) for a, b in zip(straight.groups, resumed.groups)
               for x, y in zip(a.trajectories.W, b.trajectories.W))


def test_mixture_options_are_checked():
    with pytest.raises(ConfigError, match="max_meta_steps"):
        mixture(max_meta_steps=None)
    with pytest.raises(ConfigError, match="coordinatewise"):
        MetaTrainConfig.from_dict({**tiny(), "mix": {"pool": 2}, "max_meta_steps": 3})
    with pytest.raises(ConfigError, match="mix.widths"):
        TaskMix(widths=[8])


def test_a_training_state_records_non_finite_metrics_as_null(tmp_path):
    import json as _json
    from metatele.meta.state import decode, state_files
    cfg = cw(**{"validation.every": 0})
    engine = build_engine(cfg)
    engine.meta_step()
    saver = TrainingCheckpointer(cfg, tmp_path, handle_signals=False,
                                 history=[{"meta_step": 1, "meta_loss": float("nan"), "seconds": float("inf")}])
    saver.save(engine)
    doc, _ = decode(state_files(tmp_path)[0][1].read_bytes())
    assert doc["history"] == [{"meta_step": 1, "meta_loss": None, "seconds": None}]
    _json.dumps(doc["history"], allow_nan=False)  # strict JSON


LONG_RUNS = Path(__file__).parents[1] / "experiments" / "long_runs"
RUNS = yaml.safe_load((LONG_RUNS / "runs.yaml").read_text())


def test_every_long_run_folder_is_listed_with_its_config():
    folders = {p.name for p in LONG_RUNS.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
    assert folders <= set(RUNS), folders - set(RUNS)
    assert {"generalist_update", "generalist_update_tele", "generalist_lr", "generalist_lr_tele"} <= folders


def test_every_listed_run_loads_and_each_meta_seed_trains_on_its_own_tasks():
    from metatele.meta.config import MetaTrainConfig, load_config
    from metatele.meta.state import CONTAINER
    from metatele.studies.protocol import SEED_STRIDE
    for name, spec in RUNS.items():
        config = load_config(spec["config"], spec.get("set", []))
        if config.init_from is None:
            assert config.train_seed_start == config.seed * SEED_STRIDE, name
        else:  # a warm start trains its source's meta-seed further, on new tasks of that meta-seed
            source = Path(__file__).parents[1] / config.init_from
            doc = CONTAINER.document(source.read_bytes(), str(source))  # committed beside the runs
            assert MetaTrainConfig.from_saved(doc["config"]).seed == config.seed, name
            assert config.seed * SEED_STRIDE < config.train_seed_start < (config.seed + 1) * SEED_STRIDE, name
        assert name.endswith(f"_seed{config.seed}") == (config.seed > 0), name
        assert (config.mix is None) == name.startswith("specialist_"), name


@pytest.mark.parametrize("name", sorted(n for n in RUNS if (LONG_RUNS / n).is_dir()))
def test_the_committed_long_runs_resume_from_their_listed_configs(name):
    # an unfinished run: what `metatele train --config CONFIG --set ... --out DIR --resume` checks
    # before it continues: the saved config (read from the file's header alone) against the listed
    # one. The states were saved with the coordinatewise ablation switches flat (and an update run
    # with m2's rate lr_teleport, which it never used), and the lr pair with a larger budget; all of
    # that migrates or may change on resume. A finished run: its selected checkpoint was
    # meta-trained with the listed config, to its budget
    from metatele.meta.config import load_config
    from metatele.meta.state import CONTAINER, config_differences, state_files
    from metatele.release.checkpoint import load_checkpoint
    config = load_config(RUNS[name]["config"], RUNS[name].get("set", []))
    folder = LONG_RUNS / name
    files = state_files(folder)
    if files:
        path = files[0][1]
        doc = CONTAINER.document(path.read_bytes(), str(path))
        assert config_differences(doc["config"], config) == []
    else:
        ck = load_checkpoint(folder / "checkpoint.safetensors")
        assert ck.provenance["meta_steps"] == ck.config.max_meta_steps  # it reached its budget
        assert configs_mod.to_dict(ck.config) == configs_mod.to_dict(config)


def test_the_default_protocol_evaluates_each_meta_seeds_long_run_as_shipped():
    """metatele benchmark's default protocol names shipped optimizers: each holds the meta-parameters
    of the selected checkpoint of the long run of its variant and meta-seed (its own training
    tasks), with that run's config except, where it was redeployed, its safeguard settings."""
    from metatele.meta.config import load_config
    from metatele.release.checkpoint import DEPLOYMENT_KEYS
    from metatele.release.pretrained import REGISTRY, pretrained_path
    from metatele.studies.benchmark import DEFAULT_CONFIG
    from metatele.studies.protocol import SEED_STRIDE
    protocol = yaml.safe_load(DEFAULT_CONFIG.read_text())
    variants = {"update+tele": "update_tele", "update": "update", "lr+tele": "lr_tele", "lr": "lr"}
    shipped_by = {spec["ships"]: run for run, spec in RUNS.items() if "ships" in spec}

    def without_deployment(config: MetaTrainConfig) -> dict:
        d = configs_mod.to_dict(config)
        for k in DEPLOYMENT_KEYS:
            d["learned"]["coordinatewise"].pop(k)
        return d

    for method, spec in protocol["methods"].items():
        kind, variant = method[3:method.index("(")], method[method.index("(") + 1:method.index(")")]
        assert kind in ("generalist", "specialist")
        assert sorted(spec["pretrained"]) == protocol["meta_seeds"] == [0, 1, 2]
        for k, name in spec["pretrained"].items():
            run = f"{kind}_{variants[variant]}" + (f"_seed{k}" if k else "")
            assert name in REGISTRY and name == run.replace("_", "-")
            run = shipped_by.get(name, run)  # a run trained further (a warm start) ships under its source's name
            shipped, trained = load_checkpoint(pretrained_path(name)), load_checkpoint(LONG_RUNS / run / "checkpoint.safetensors")
            assert same_parameters(shipped.optimizer.state_dict(), trained.optimizer.state_dict())
            assert without_deployment(shipped.config) == without_deployment(trained.config)
            deployed = shipped.provenance.get("deployment")
            assert (shipped.config == trained.config) if deployed is None else \
                deployed["as_trained"] == {k: getattr(trained.config.learned.coordinatewise, k) for k in DEPLOYMENT_KEYS}
            config = load_config(RUNS[run]["config"], RUNS[run].get("set", []))
            assert config.seed == k and config.learned.variant == variant
            assert k * SEED_STRIDE <= config.train_seed_start < (k + 1) * SEED_STRIDE  # its own training tasks
            assert (config.mix is None) == (kind == "specialist")
    init = protocol["methods"]["CW-generalist(update+tele) [init]"]
    assert init == {**protocol["methods"]["CW-generalist(update+tele)"], "initialisation": True}


def test_the_generalist_protocol_evaluates_the_mixtures_held_out_architectures():
    import yaml
    from pathlib import Path
    from metatele.meta.config import load_config
    from metatele.optimizers.learned import LearnedOptimizer
    from metatele.symmetry.action import teleport
    from metatele.tasks.digits import cross_entropy
    from metatele.tasks.family import sample_tasks
    from metatele.studies.benchmark import DEFAULT_CONFIG
    protocol = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config = load_config("ship/generalist_update_tele")
    held = config.mix.held_out_architectures(config.task)
    listed = [TaskConfig(**t["task"]) for t in protocol["transfer"]["targets"].values()]
    assert [architecture_key(t) for t in listed] == [architecture_key(t) for t in held]
    assert {t.family for t in listed} == {"regression"}
    # digits has its own protocol (to 300 steps), over the same checkpoints of the update pair
    on_digits = yaml.safe_load((Path(__file__).parents[1] / "experiments" / "benchmark_generalist_digits.yaml").read_text())
    assert on_digits["methods"] == {m: protocol["methods"][m] for m in on_digits["methods"]}
    assert set(on_digits["methods"]) == {"CW-generalist(update+tele)", "CW-generalist(update)"}
    assert on_digits["meta_seeds"] == protocol["meta_seeds"] and on_digits["test_seeds"] == protocol["test_seeds"]
    protocol = on_digits
    listed = [TaskConfig(**t["task"]) for t in protocol["transfer"]["targets"].values()]
    assert TaskConfig(**protocol["settings"]["gaussian-20"]["task"]) == config.task
    assert config.mix == load_config("ship/generalist_update").mix  # the twin trains on the same mixture
    # digits is held out as a whole family: the mixture draws regression architectures only
    (digits,) = [t for t in listed if t.family == "digits"]
    trained_on = [config.task, *config.mix.training_architectures(config.task)]
    assert {t.family for t in trained_on} == {"regression"}
    assert any(t["rule"] == "ci_below" and t["sections"] == ["transfer-digits"] and t["steps"] == [30, 100, 300]
               for t in protocol["targets"])
    # the generalist's m2 can teleport there: with the teleport batch every pair's action is a
    # symmetry (its loss there is unchanged), and the generalist steps on digits' cross-entropy
    assert digits.non_symmetric_pairs() == [] and digits.teleport_samples == 33
    b = sample_tasks(digits, [0], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    T = [0.05 * torch.randn(1, w.shape[1], w.shape[1], generator=gen, dtype=torch.float64) for w in b.weights[:-1]]
    moved = teleport(b.weights, b.X_tele, T)
    assert torch.allclose(cross_entropy(moved, b.X_tele, b.Y_tele), cross_entropy(b.weights, b.X_tele, b.Y_tele),
                          rtol=1e-10, atol=0)
    assert not torch.allclose(moved[0], b.weights[0])
    opt = LearnedOptimizer(digits, config.learned).double().eval()
    _, loss, _ = opt.start(b.X, b.Y, b.weights).step(b.weights)
    assert torch.allclose(loss, cross_entropy(b.weights, b.X, b.Y))


def test_validation_time_is_not_meta_training_time(monkeypatch):
    """``train_seconds`` (and so ``max_seconds``, and the x-axis of the learning curves against
    time) counts meta-steps only: a slow validation or a slow callback (logging, figures,
    checkpoints) does not eat the budget. Counted, they would add 1.0 + 1.5 s here."""
    real = snap_mod.Snapshots.validate

    def slow(self, engine):
        time.sleep(0.5)
        return real(self, engine)

    monkeypatch.setattr(snap_mod.Snapshots, "validate", slow)
    result = meta_train(cw(max_meta_steps=6), progress=False, callback=lambda engine, metrics: time.sleep(0.25))
    assert len(result.snapshots.history) == 3  # meta-steps 0, 3, 6
    assert result.train_seconds < 1.25  # six tiny meta-steps, with room for a busy machine
    seconds = [r["train_seconds"] for r in result.snapshots.history]
    assert seconds == sorted(seconds)


def test_the_estimator_candidates_load_and_differ_from_the_baseline_only_in_the_estimator():
    """experiments/estimators/*.yaml: every candidate is a valid config, and against the baseline
    (tbptt30) it changes only estimator knobs (and its validation cadence), so the comparison is
    about the estimator."""
    folder = Path(__file__).parents[1] / "experiments" / "estimators"
    configs = {p.stem: configs_mod.to_dict(MetaTrainConfig.from_dict(yaml.safe_load(p.read_text())))
               for p in sorted(folder.glob("*.yaml"))}
    assert set(configs) == {"tbptt30", "pes", "curriculum", "logtrunc", "full", "timefeature"}
    knobs = {"estimator", "pes_groups", "pes_sigma", "unroll", "unroll_max", "curriculum", "truncation",
             "batch_size", "second_order", "validation", "learned"}
    base = configs.pop("tbptt30")
    for name, cfg in configs.items():
        changed = {k for k in base if cfg[k] != base[k]}
        assert changed and changed <= knobs, (name, changed)
        if "learned" in changed:  # only the time input
            assert cfg["learned"]["coordinatewise"]["time_feature"] and not base["learned"]["coordinatewise"]["time_feature"]


def _script(path: Path):
    """An experiments/ script as a module (experiments/ is no package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_long_run_continues_from_its_committed_state_and_its_results_are_collected(tmp_path, monkeypatch):
    """experiments/long_runs/run.py: `train` resumes the committed state of a run of runs.yaml with
    its listed config; `collect` brings back the newest state, then a finished run's files."""
    script = _script(LONG_RUNS / "run.py")
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(configs_mod.to_dict(cw(max_meta_steps=30))))
    listed = {"r": {"config": str(cfg_file), "set": ["max_meta_steps=9", "seed=1"]}}
    config = MetaTrainConfig.from_dict({**configs_mod.to_dict(cw()), "seed": 1})
    committed, work = tmp_path / "long_runs" / "r", tmp_path / "runs" / "r"
    saver = TrainingCheckpointer(config, work, every=1, keep=3, handle_signals=False)

    def stop_at_3(engine, metrics):  # a first sitting, stopped after its state at meta-step 3
        saver(engine, metrics)
        if engine.meta_step_count == 3:
            raise Stop

    with pytest.raises(Stop):
        meta_train(config, progress=False, callback=stop_at_3)
    text = script.collect(work, committed)
    assert [s for s, _ in state_files(committed)] == [3] and "meta-step 3 of 9" in text
    assert (committed / "validation.png").is_file()
    older = tmp_path / "older" / "training_state"  # a stale working folder, at meta-step 2
    older.mkdir(parents=True)
    shutil.copy2(work / "training_state" / "state-00000002.safetensors", older)
    with pytest.raises(SystemExit, match="older than the committed one"):  # never replaces a newer state
        script.collect(older.parent, committed)
    assert script.seed_work(committed, older.parent).name == "state-00000003.safetensors"  # it gets the newer one
    shutil.rmtree(work)  # a fresh machine: only the repository's files
    assert script.seed_work(committed, work).name == "state-00000003.safetensors"
    assert script.seed_work(committed, work) is None  # never over a state already there
    assert cli.main(script.train_argv("r", listed, work, "--no-progress", "--wandb", "disabled")) == 0
    text = script.collect(work, committed)
    assert not (committed / "training_state").exists() and text.startswith("Finished: meta-step 9 of 9")
    with pytest.raises(SystemExit, match="has finished"):  # a finished run is neither continued nor collected again
        script.seed_work(committed, tmp_path / "fresh")
    with pytest.raises(SystemExit, match="has finished"):
        script.collect(work, committed)
    reference = meta_train(config, progress=False)  # the same run in one sitting
    assert same_parameters(load_checkpoint(committed / "final.safetensors").optimizer.state_dict(),
                           reference.optimizer.state_dict())
    assert json.loads((committed / "validation.json").read_text())[-1]["meta_step"] == 9
    with pytest.raises(SystemExit, match="not a run of runs.yaml"):
        script.train_argv("nope", listed, work)
    # shipped with the update safeguard on (`run.py ship r --as x --deploy ...`): same meta-parameters,
    # and ship_benchmark.py finds the long run and the command that wrote the file
    dst = script.ship(committed, tmp_path / "pkg" / "x.safetensors", ["update_safeguard=true", "update_backoff=0.5"],
                      "python experiments/long_runs/run.py ship r --as x --deploy ...")
    shipped, trained = load_checkpoint(dst), load_checkpoint(committed / "checkpoint.safetensors")
    assert same_parameters(shipped.optimizer.state_dict(), trained.optimizer.state_dict())
    assert (shipped.config.learned.coordinatewise.update_safeguard, shipped.config.learned.coordinatewise.update_backoff) \
        == (True, 0.5) and trained.config.learned.coordinatewise.update_backoff is None
    for bad, why in ((["hidden=3"], "expected KEY=VALUE"), (["update_backoff=0.5"], "needs update_safeguard")):
        with pytest.raises((SystemExit, CheckpointError), match=why):
            script.ship(committed, tmp_path / "pkg" / "y.safetensors", bad, "")
    with pytest.raises(SystemExit, match="has not finished"):
        script.ship(tmp_path / "long_runs" / "none", tmp_path / "pkg" / "y.safetensors", [], "")
    shutil.copytree(tmp_path / "long_runs", tmp_path / "experiments" / "long_runs")
    monkeypatch.chdir(tmp_path)
    ship_benchmark = _script(LONG_RUNS.parent / "ship_benchmark.py")
    assert ship_benchmark.long_run_commands(dst) == [
        "python experiments/long_runs/run.py train r  # repeated until it has reached its budget",
        "python experiments/long_runs/run.py ship r --as x --deploy ..."]
    assert ship_benchmark.long_run_commands(script.ship(committed, tmp_path / "pkg" / "z.safetensors", [], "")) == [
        "python experiments/long_runs/run.py train r  # repeated until it has reached its budget"]


def test_learned_vs_init_compares_a_checkpoint_with_its_initialisation_or_its_twin_on_unselected_validation_seeds(tmp_path):
    script = _script(LONG_RUNS.parent / "learned_vs_init.py")
    ckpts = {}
    for variant in ("update+tele", "update"):
        cfg_file = tmp_path / f"{variant}.yaml"
        cfg = configs_mod.to_dict(cw(max_meta_steps=3, **{"learned.variant": variant}))
        cfg_file.write_text(yaml.safe_dump(cfg))
        out = tmp_path / variant
        assert cli.main(["train", "--config", str(cfg_file), "--out", str(out), "--no-progress", "--wandb", "disabled"]) == 0
        ckpts[variant] = str(out / "checkpoint.safetensors")
    r = script.compare_with_init(ckpts["update+tele"], 4, 6, [3, 6], None, against=ckpts["update"])
    assert r["names"] == ["update+tele", "update"]
    ck, twin = load_checkpoint(ckpts["update+tele"]), load_checkpoint(ckpts["update"])
    from metatele.evaluation.evaluate import evaluate
    from metatele.evaluation.stats import paired_comparison
    from metatele.tasks.family import validation_seeds
    seeds = list(validation_seeds(4, start=3))  # after the 3 the runs selected their snapshots on
    assert r["validation_seeds"] == [seeds[0], seeds[-1] + 1]
    a, b = (evaluate(c.optimizer, ck.config.task, seeds, 6, dtype=torch.float64) for c in (ck, twin))
    np_equal = lambda x, y: bool(((x == y) | (np.isnan(x) & np.isnan(y))).all())  # noqa: E731
    assert np_equal(r["curves"]["update+tele"], a.log_loss) and np_equal(r["curves"]["update"], b.log_loss)
    assert r["rows"][1]["diff"] == pytest.approx(paired_comparison(a, b, 6)["mean_diff"])
    assert any("update+tele − update" in line for line in script.table(r))
    same = script.compare_with_init(ckpts["update"], 4, 6, [6], None, against=ckpts["update"])
    assert same["names"] == ["checkpoint", "against"] and same["rows"][0]["diff"] == 0
    init = script.compare_with_init(ckpts["update"], 4, 6, [6], 0)
    first = list(validation_seeds(4, start=0))
    assert init["names"] == ["trained", "initialisation"] and init["validation_seeds"] == [first[0], first[-1] + 1]


def test_many_runs_continue_side_by_side_for_a_fixed_time_and_are_packed(tmp_path):
    """experiments/long_runs/many.sh: a run that reaches its budget is packed with its finished
    files, one stopped by the time limit with its saved state; an unknown name is refused first, and
    a run stopped before its first saved state is a failure that says so."""
    import subprocess
    import tarfile
    from helpers import subprocess_env
    configs = {"short": cw(max_meta_steps=1, **{"validation.every": 0}),  # done within the time limit
               # stopped by it: enough trajectories that the seeds never run out (1,000 last a fast
               # machine about 10 s)
               "long": cw(max_meta_steps=10**6, trajectories=10**8, **{"validation.every": 0})}
    listed = {}
    for name, config in configs.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(configs_mod.to_dict(config)))
        listed[name] = {"config": str(tmp_path / f"{name}.yaml"), "set": ["seed=0"]}
    (tmp_path / "runs.yaml").write_text(yaml.safe_dump(listed))
    script = LONG_RUNS / "many.sh"
    env = {**subprocess_env(), "RUNS_YAML": str(tmp_path / "runs.yaml"), "WANDB_MODE": "disabled"}
    bad = subprocess.run(["bash", str(script), "5", "pack", "short", "nope"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "nope is not a run of runs.yaml" in bad.stderr and not (tmp_path / "runs" / "short").exists()
    early = subprocess.run(["bash", str(script), "1", "early", "long"], cwd=tmp_path, env=env,  # 1 s: still importing
                           capture_output=True, text=True, timeout=120)
    assert early.returncode != 0 and "long was stopped before it saved any training state" in early.stderr
    proc = subprocess.run(["bash", str(script), "12", "pack", "short", "long"], cwd=tmp_path,
                          env={**env, "PACK_MIB": "0.01"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr + (tmp_path / "runs" / "long.log").read_text()
    archives = sorted((tmp_path / "pack").iterdir())  # each run alone: both exceed 0.01 MiB
    assert [a.name for a in archives] == ["runs-0.tar.gz", "runs-1.tar.gz"]
    names = set()
    for a in archives:
        with tarfile.open(a) as tar:
            names |= set(tar.getnames())
    assert "runs/short/checkpoint.safetensors" in names  # (final and average: only for a run that validates)
    assert {"runs/short.log", "runs/long.log"} <= names
    long_states = [n for n in names if n.startswith("runs/long/training_state/state-")]
    assert len(long_states) == 1 and not any(n.startswith("runs/short/training_state") for n in names)


def test_a_warm_started_long_run_is_retrained_by_its_sources_commands_then_its_own():
    ship_benchmark = _script(LONG_RUNS.parent / "ship_benchmark.py")
    phases = ship_benchmark.first_phase("generalist_update_tele_safeguarded", LONG_RUNS / "runs.yaml")
    assert phases == ["python experiments/long_runs/run.py train generalist_update_tele  # repeated until it has reached "
                      "its budget; generalist_update_tele_safeguarded starts from its training state experiments/long_runs/"
                      "generalist_update_tele_continued/training_state/state-00009100.safetensors (committed)"]
    assert ship_benchmark.first_phase("generalist_update_tele", LONG_RUNS / "runs.yaml") == []
    for run, spec in RUNS.items():  # every warm start names the run it starts from, and that run is listed
        warm = any(kv.startswith("init_from=") for kv in spec.get("set", []))
        assert warm == ("after" in spec) and (not warm or spec["after"] in RUNS), run
