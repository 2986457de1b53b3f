"""Strict dict <-> dataclass conversion and command-line overrides (metatele.configs)."""
from __future__ import annotations

import configparser
import fnmatch
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from metatele.optimizers.baselines import BaselineConfig
from metatele.studies.digits import DigitsStudyConfig
from metatele.configs import (ConfigError, apply_overrides, default_names, defaults_dir, field_docs, from_dict,
                              load_yaml_mapping, parse_value, require, resolve_config, to_dict)
from metatele.meta.config import MetaTrainConfig, load_config
from metatele.release.pretrained import REGISTRY, pretrained_dir
from metatele.studies.protocol import load_protocol
from metatele.symmetry.strategies import TeleportSchedule
from metatele.tasks.family import TaskConfig


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_to_dict_gives_plain_nested_python():
    config = BaselineConfig("adam", teleport=TeleportSchedule(steps=[5]))
    data = to_dict(config)
    assert data["name"] == "adam" and data["betas"] == [0.9, 0.999]  # tuples become lists
    assert data["teleport"]["steps"] == [5] and data["teleport"]["strategy"] == "gradient_ascent"
    assert to_dict(TaskConfig()) == {"dims": [20, 20, 20, 20], "distribution": "uniform", "bias": False,
                                     "family": "regression", "teleport_batch": None, "minibatch": None}


@pytest.mark.parametrize(
    "config",
    [
        TaskConfig([8, 5, 4, 3], "gaussian"),
        BaselineConfig("adam", lr=1e-3, betas=(0.8, 0.99), teleport=TeleportSchedule(steps=[3, 7], strategy="random")),
        BaselineConfig(),
    ],
    ids=["task", "baseline+teleport", "default"],
)
def test_round_trip_through_dict_gives_an_equal_config(config):
    rebuilt = from_dict(type(config), to_dict(config))
    assert rebuilt == config
    if isinstance(config, BaselineConfig):
        assert isinstance(rebuilt.betas, tuple)
        assert rebuilt.teleport is None or isinstance(rebuilt.teleport, TeleportSchedule)


def test_from_dict_fills_missing_keys_with_defaults():
    assert from_dict(TaskConfig, {}) == TaskConfig()
    assert from_dict(TaskConfig, None) == TaskConfig()
    assert from_dict(BaselineConfig, {"lr": 1e-3}).name == "gd"


def test_from_dict_rejects_an_unknown_key_naming_it_with_a_suggestion():
    with pytest.raises(ConfigError) as info:
        from_dict(TaskConfig, {"dim": [4, 3, 2]})
    message = str(info.value)
    assert "'dim'" in message
    assert "did you mean 'dims'" in message
    assert "allowed keys: bias, dims, distribution" in message


def test_from_dict_rejects_an_unknown_key_without_a_close_match():
    with pytest.raises(ConfigError, match="unknown config key 'zzz'") as info:
        from_dict(BaselineConfig, {"zzz": 1})
    assert "did you mean" not in str(info.value)


def test_from_dict_names_the_path_of_a_nested_unknown_key():
    with pytest.raises(ConfigError, match=r"'teleport\.stpes' \(did you mean 'steps'\?\)"):
        from_dict(BaselineConfig, {"teleport": {"stpes": [5]}})
    with pytest.raises(ConfigError, match=r"unknown config key 'run\.dimz' \(did you mean 'dims'\?\)"):
        from_dict(TaskConfig, {"dimz": 1}, where="run")


def test_from_dict_rejects_a_non_mapping():
    with pytest.raises(ConfigError, match="expected a mapping"):
        from_dict(TaskConfig, ["dims", [4, 3, 2]])


def test_from_dict_runs_the_dataclass_validation():
    with pytest.raises(ConfigError, match="task.dims"):
        from_dict(TaskConfig, {"dims": [4, 3]})


def test_apply_overrides_parses_key_value_with_yaml_types():
    data = to_dict(BaselineConfig())
    out = apply_overrides(
        data,
        [
            "name=adam",
            "lr=3e-4",
            "momentum=0.5",
            "betas=[0.8, 0.99]",
            "teleport.steps=[5, 10]",
            "teleport.exact=false",
        ],
    )
    assert out["name"] == "adam" and out["lr"] == pytest.approx(3e-4) and isinstance(out["lr"], float)
    assert out["momentum"] == 0.5 and out["betas"] == [0.8, 0.99]
    assert out["teleport"] == {"steps": [5, 10], "exact": False}
    assert data["name"] == "gd" and data["teleport"] is None  # the input is not modified
    config = from_dict(BaselineConfig, out)
    assert config.teleport.steps == [5, 10] and config.teleport.exact is False and config.lr == 3e-4


def test_apply_overrides_value_may_contain_equals_signs():
    assert apply_overrides({}, ["note=a=b"]) == {"note": "a=b"}


def test_apply_overrides_rejects_text_without_equals():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["lr"])


def test_apply_overrides_rejects_a_path_through_a_value():
    with pytest.raises(ConfigError, match="'lr' is not a section"):
        apply_overrides({"lr": 0.1}, ["lr.x=1"])


@pytest.mark.parametrize(
    "text, value",
    [
        ("3", 3),
        ("3.5", 3.5),
        ("3e-4", 3e-4),  # YAML 1.1 would read this as a string
        ("-1E5", -1e5),
        ("[1e-3, 2]", [1e-3, 2]),
        ("true", True),
        ("null", None),
        ("gaussian", "gaussian"),
        ("[20, 20, 20, 20]", [20, 20, 20, 20]),
    ],
)
def test_parse_value(text, value):
    parsed = parse_value(text)
    assert parsed == value and type(parsed) is type(value)


def test_require_raises_config_error_naming_the_field():
    require(True, "x.y", "never raised")
    with pytest.raises(ConfigError, match=r"^x\.y: must be positive$"):
        require(False, "x.y", "must be positive")


# -- shipped defaults (package data) ------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = {"benchmark", "benchmark_retrain", "benchmark_lstm", "benchmark_quick", "search", "search_quick"}


def test_shipped_defaults_are_package_data_inside_metatele():
    import metatele

    assert defaults_dir() == Path(metatele.__file__).parent / "defaults"
    names = default_names()
    assert {"update_tele", "update", "lr_tele", "quick", "ship/update_tele", "search_selected"} | PROTOCOLS <= set(names)
    assert not (ROOT / "experiments" / "configs").exists()  # one copy of each YAML


@pytest.mark.parametrize("name", [n for n in default_names() if n != "search_selected"])
def test_every_shipped_default_resolves_by_name_and_loads(name):
    path = resolve_config(name)
    assert path == defaults_dir() / f"{name}.yaml" and resolve_config(f"{name}.yaml") == path
    if name in PROTOCOLS:
        load_protocol(name)
    elif name == "digits":  # the digits study's config, not a meta-training one
        assert from_dict(DigitsStudyConfig, load_yaml_mapping(path, "digits config")) == DigitsStudyConfig()
    else:
        assert isinstance(load_config(name), MetaTrainConfig)


def test_an_existing_file_wins_over_a_shipped_name_and_unknown_names_list_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("quick").write_text("trajectories: 3\n")
    assert resolve_config("quick") == Path("quick") and load_config("quick").trajectories == 3
    with pytest.raises(ConfigError, match=r"config file not found: nope .*shipped defaults in .*update_tele"):
        resolve_config("nope")


def test_setup_cfg_ships_every_default_yaml():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    patterns = [p.strip() for p in cfg["options.package_data"]["metatele"].split(",")]
    shipped = [*defaults_dir().rglob("*.yaml"), *pretrained_dir().iterdir()]  # configs and pretrained optimizers
    assert any(p.suffix == ".safetensors" for p in shipped)
    for path in shipped:
        rel = path.relative_to(defaults_dir().parent).as_posix()
        assert any(fnmatch.fnmatch(rel, p) and rel.count("/") == p.count("/") for p in patterns), rel


@pytest.mark.slow
def test_a_built_wheel_contains_the_default_yamls(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "-w", str(tmp_path), "--no-deps", "-q"],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("metatele-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in default_names():
        assert f"metatele/defaults/{name}.yaml" in names
    for name in REGISTRY:
        assert {f"metatele/pretrained/{name}.safetensors", f"metatele/pretrained/{name}.manifest.json"} <= names


def test_field_docs_reads_the_attributes_section_of_a_dataclass():
    docs = field_docs(MetaTrainConfig)
    assert docs["normalize"].startswith("divide every task's losses by its loss at the start")
    assert docs["lr_update"] == docs["lr_teleport"]  # one entry documenting two fields
    assert "log-uniformly" in docs["truncation"]  # continuation lines are joined
    assert set(docs) <= {f for f in MetaTrainConfig.__dataclass_fields__}


# -- types and finiteness of every numeric key (configs.check_value) ----------------------------------
BAD_VALUES = [
    ("lr_update", "nan"), ("lr_update", ".nan"), ("lr_update", "abc"), ("lr_update", ".inf"),
    ("learned.lstm.hidden", "2.5"), ("learned.lstm.layers", "2.5"), ("learned.coordinatewise.hidden", "2.5"),
    ("lr_teleport", ".inf"), ("learned.teleport.eps", ".inf"), ("augment_scale", ".inf"), ("late_weight", ".inf"),
    ("learned.lstm.output_scale", ".inf"), ("learned.coordinatewise.lr", ".inf"), ("learned.base.lr", ".inf"),
    ("grad_clip", ".inf"), ("steps", "true"), ("task.dims", "[8, 4.5, 3]"),
]


@pytest.mark.parametrize("key,value", BAD_VALUES)
def test_a_non_finite_or_mistyped_value_is_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError) as e:
        MetaTrainConfig.from_dict(apply_overrides({}, [f"{key}={value}"]))
    assert str(e.value).startswith(f"{key}: ") and " must be " in str(e.value)


def test_a_config_built_in_python_is_checked_like_one_read_from_yaml():
    with pytest.raises(ConfigError, match=r"^baseline\.lr: must be a finite number, got inf"):
        BaselineConfig(lr=math.inf)
    with pytest.raises(ConfigError, match=r"^baseline\.lr: must be a finite number, got nan"):
        BaselineConfig(lr=math.nan)
    with pytest.raises(ConfigError, match=r"^task\.family: must be a string"):
        TaskConfig(family=3)


def test_from_dict_checks_the_types_of_every_config_not_only_meta_training():
    with pytest.raises(ConfigError, match=r"^steps: must be an integer, got 2\.5"):
        from_dict(DigitsStudyConfig, {"steps": 2.5})
    with pytest.raises(ConfigError, match=r"^lrs: entry 1 must be a finite number, got inf"):
        from_dict(DigitsStudyConfig, {"lrs": [0.1, float("inf")]})
    assert from_dict(DigitsStudyConfig, {"geometry_step_norm": 1}).geometry_step_norm == 1  # an int is a number


# -- an option either applies to the run or setting it is an error (LearnedConfig) ---------------------
@pytest.mark.parametrize("arch,item,key", [
    ("coordinatewise", "learned.lstm.hidden=64", "learned.lstm.hidden"),
    ("coordinatewise", "learned.lstm.gd_skip=true", "learned.lstm.gd_skip"),
    ("coordinatewise", "learned.teleport.eps=0.1", "learned.teleport.eps"),
    ("coordinatewise", "learned.teleport.learn_eps=true", "learned.teleport.learn_eps"),
    ("paper", "learned.coordinatewise.update_bound=0.5", "learned.coordinatewise.update_bound"),
    ("paper", "learned.coordinatewise.hidden=8", "learned.coordinatewise.hidden"),
])
def test_an_option_that_does_not_apply_to_the_architecture_is_an_error_naming_it(arch, item, key):
    with pytest.raises(ConfigError) as e:
        MetaTrainConfig.from_dict(apply_overrides({}, [f"learned.arch={arch}", item]))
    assert str(e.value).startswith(f"{key}: does not apply to this run: ")
    MetaTrainConfig.from_dict(apply_overrides({}, [f"learned.arch={arch}"]))  # the defaults are fine


CW = "learned.arch=coordinatewise"
#: (the run, an option it does not read, what the error says): each was accepted silently before
NOT_APPLYING = [
    ([CW, "learned.variant=tele"], "learned.coordinatewise.lr=0.1", "variant: tele has no learned update (m1)"),
    ([CW, "learned.variant=tele"], "learned.coordinatewise.magnitude_scale=2.0", "its local step is learned.base"),
    ([CW, "learned.variant=lr+tele"], "learned.coordinatewise.time_feature=true", "variant: lr+tele has no learned update"),
    ([CW, "learned.variant=update"], "learned.coordinatewise.tele_norm_init=0.01", "variant: update does not teleport"),
    ([CW, "learned.variant=update"], "learned.coordinatewise.ablation.every=5", "variant: update does not teleport"),
    ([CW, "learned.variant=update"], "learned.coordinatewise.ablation.gate=learned", "variant: update does not teleport"),
    ([CW, "learned.variant=update"], "lr_teleport=1e-3", "the Adam rate of m2, and variant: update does not teleport"),
    (["learned.variant=update"], "lr_teleport=1e-3", "the Adam rate of m2, and variant: update does not teleport"),
    ([CW, "learned.variant=tele"], "lr_update=3e-3", "the Adam rate of m1, and variant: tele has no learned update"),
    (["learned.variant=lr+tele"], "lr_update=3e-3", "the Adam rate of m1, and variant: lr+tele has no learned update"),
    ([CW, "learned.variant=update"], "learned.teleport.exact=false", "variant: update does not teleport"),
    (["learned.variant=update"], "learned.teleport.eps=0.1", "variant: update does not teleport"),
    (["learned.variant=update+tele"], "learned.base.lr=0.1", "learned.base is the hand-designed local step of variant: tele"),
    ([CW, "learned.variant=update"], "learned.base.name=gd", "learned.base is the hand-designed local step"),
    (["learned.variant=tele"], "learned.lstm.gd_skip=true", "variant: tele has no learned update (m1)"),
    (["learned.variant=lr+tele"], "learned.lstm.output_scale=0.01", "variant: lr+tele has no learned update (m1)"),
    (["learned.variant=update+tele"], "learned.teleport.lr_max=0.01", "only the lr+tele variant's m2 writes a step size"),
    ([CW, "learned.variant=tele"], "learned.teleport.lr_min=1e-5", "only the lr+tele variant's m2 writes a step size"),
    ([CW, "learned.variant=lr+tele", "learned.coordinatewise.update_safeguard=true"],
     "learned.coordinatewise.update_backoff=0.5", "η g has no state"),
    ([CW, "learned.variant=lr+tele"], "learned.coordinatewise.ablation.teleport_state=reset", "η g has no state"),
    ([CW, "learned.variant=update"], "learned.coordinatewise.update_regrow=1.05", "sets no update_backoff"),
]


@pytest.mark.parametrize("run,item,why", NOT_APPLYING, ids=[f"{r[-1]}:{i.split('=')[0]}" for r, i, _ in NOT_APPLYING])
def test_an_option_the_variant_does_not_read_is_an_error_naming_it_and_why(run, item, why):
    key = item.split("=")[0]
    with pytest.raises(ConfigError) as e:
        MetaTrainConfig.from_dict(apply_overrides({}, run + [item]))
    assert str(e.value).startswith(f"{key}: does not apply to this run: ") and why in str(e.value)
    MetaTrainConfig.from_dict(apply_overrides({}, run))  # the run without it is fine


@pytest.mark.parametrize("run,item,why", NOT_APPLYING, ids=[f"{r[-1]}:{i.split('=')[0]}" for r, i, _ in NOT_APPLYING])
def test_a_saved_config_holding_an_option_its_variant_never_read_still_loads_without_it(run, item, why):
    saved = apply_overrides(to_dict(MetaTrainConfig.from_dict(apply_overrides({}, run))), [item])
    assert MetaTrainConfig.from_saved(saved) == MetaTrainConfig.from_dict(apply_overrides({}, run))


def test_the_options_each_variant_reads_are_accepted():
    tele = MetaTrainConfig.from_dict(apply_overrides({}, [
        CW, "learned.variant=tele", "learned.base.lr=0.1", "learned.coordinatewise.ablation.every=5",
        "learned.coordinatewise.hidden=8", "learned.coordinatewise.update_bound=0.5", "learned.coordinatewise.update_safeguard=true",
        "learned.coordinatewise.update_backoff=0.5", "learned.coordinatewise.update_regrow=1.05",
        "learned.coordinatewise.ablation.teleport_state=reset", "learned.teleport.exact=false", "lr_teleport=3e-3"]))
    assert tele.learned.base.lr == 0.1 and tele.learned.coordinatewise.update_regrow == 1.05
    update = MetaTrainConfig.from_dict(apply_overrides({}, [
        CW, "learned.variant=update", "learned.coordinatewise.lr=0.1", "learned.coordinatewise.magnitude_scale=2.0",
        "learned.coordinatewise.time_feature=true", "learned.coordinatewise.update_bound=0.5"]))
    assert update.learned.coordinatewise.lr == 0.1
    paper = MetaTrainConfig.from_dict(apply_overrides({}, ["learned.variant=lr+tele", "learned.lstm.hidden=64",
                                                           "learned.teleport.lr_max=0.01", "learned.teleport.eps=0.1"]))
    assert paper.learned.teleport.emit_lr and paper.learned.teleport.lr_max == 0.01


def test_the_options_each_architecture_reads_are_accepted():
    cw = MetaTrainConfig.from_dict(apply_overrides({}, [
        "learned.arch=coordinatewise", "learned.variant=lr+tele", "learned.teleport.exact=false",
        "learned.teleport.lr_max=0.01", "learned.coordinatewise.update_bound=0.5"]))
    assert cw.learned.teleport_norm == cw.learned.coordinatewise.tele_norm_init
    paper = MetaTrainConfig.from_dict(apply_overrides({}, ["learned.lstm.hidden=64", "learned.teleport.eps=0.1"]))
    assert paper.learned.teleport_norm == 0.1


def test_a_saved_config_holding_options_its_architecture_never_read_still_loads():
    saved = to_dict(MetaTrainConfig())  # arch: paper
    saved["learned"]["coordinatewise"]["lr"] = 0.1  # as a protocol's shared base once set for every method
    with pytest.raises(ConfigError, match="learned.coordinatewise.lr: does not apply"):
        MetaTrainConfig.from_dict(saved)
    assert MetaTrainConfig.from_saved(saved) == MetaTrainConfig()


@pytest.mark.parametrize("key,old,other", [
    ("tele_direction_scale", 1.0, 0.5), ("tele_gradient_power", 1.0, 0.5), ("betas", [0.5, 0.9, 0.99], [0.5, 0.9, 0.95]),
    ("update_bound_floor", 1e-3, 1e-2), ("update_safeguard_tol", 0.0, 1e-3)])
def test_a_removed_option_loads_at_its_old_default_and_is_refused_otherwise(key, old, other):
    config = MetaTrainConfig.from_dict({"learned": {"arch": "coordinatewise"}})
    saved = to_dict(config)
    saved["learned"]["coordinatewise"][key] = old  # as a checkpoint's JSON holds it (tuples as lists)
    assert MetaTrainConfig.from_saved(saved) == config
    saved["learned"]["coordinatewise"][key] = other
    with pytest.raises(ConfigError, match=rf"^learned\.coordinatewise\.{key}: was removed"):
        MetaTrainConfig.from_saved(saved)


ABLATION = {"every": 5, "teleport_state": "reset", "tele_gradient_input": False, "gate": "learned", "learn_norm": False}


def test_a_config_saved_with_the_ablation_switches_flat_loads_as_the_nested_one():
    nested = MetaTrainConfig.from_dict(apply_overrides({}, [CW] + [f"learned.coordinatewise.ablation.{k}={v}"
                                                                   for k, v in ABLATION.items()]))
    assert nested.learned.coordinatewise.ablation.gate == "learned"
    saved = to_dict(nested)  # as a checkpoint written before the switches moved into ablation holds it
    cw = saved["learned"]["coordinatewise"]
    cw.update(cw.pop("ablation"))
    assert set(ABLATION) <= set(cw) and "ablation" not in cw
    assert MetaTrainConfig.from_saved(saved) == nested
    assert MetaTrainConfig.from_dict(saved) == nested  # an old YAML file too
    cw["gate"], cw["ablation"] = "every", {"gate": "learned"}  # both places, different values: ambiguous
    with pytest.raises(ConfigError, match=r"^learned\.coordinatewise\.gate: moved to learned\.coordinatewise\."
                                          r"ablation\.gate, which holds another value"):
        MetaTrainConfig.from_dict(saved)


def test_an_old_saved_ablation_switch_its_variant_never_read_is_dropped_and_a_set_one_named_in_its_group():
    saved = to_dict(MetaTrainConfig.from_dict(apply_overrides({}, [CW, "learned.variant=update"])))
    cw = saved["learned"]["coordinatewise"]
    cw.update(cw.pop("ablation"), gate="learned")  # flat, and set where m2 is absent
    assert MetaTrainConfig.from_saved(saved) == MetaTrainConfig.from_dict(apply_overrides({}, [CW, "learned.variant=update"]))
    with pytest.raises(ConfigError, match=r"^learned\.coordinatewise\.ablation\.gate: does not apply to this run: "
                                          "variant: update does not teleport"):
        MetaTrainConfig.from_dict(saved)


def test_an_old_saved_update_run_with_m2s_rate_loads_at_the_default_rate():
    config = MetaTrainConfig.from_dict(apply_overrides({}, [CW, "learned.variant=update"]))
    saved = {**to_dict(config), "lr_teleport": 1e-3}  # as every coordinatewise update run saved before
    assert MetaTrainConfig.from_saved(saved) == config and config.lr_teleport == MetaTrainConfig.lr_teleport
    tele = {**to_dict(MetaTrainConfig.from_dict(apply_overrides({}, [CW, "learned.variant=tele"]))), "lr_update": 3e-3}
    assert MetaTrainConfig.from_saved(tele).lr_update == MetaTrainConfig.lr_update
    with_m2 = {**to_dict(MetaTrainConfig.from_dict(apply_overrides({}, [CW]))), "lr_teleport": 1e-3}
    assert MetaTrainConfig.from_saved(with_m2).lr_teleport == 1e-3  # kept where it applies
