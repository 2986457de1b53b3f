"""The benchmark protocol: settings, learned methods, baselines, ablations, seeds (YAML → dataclasses).

See ``metatele/defaults/benchmark.yaml`` and :mod:`metatele.studies.benchmark`, which runs a protocol.
Override order for a learned run: ``base`` → setting ``overrides`` → ``ablation_base`` (ablation
arms only) → the method's overrides → the setting's ``method_overrides[method]`` →
``ablation_reference`` (ablation arms only) → the ablation's ``overrides``; then ``task`` (the setting's), ``seed`` (the meta-seed) and
``train_seed_start += meta_seed × SEED_STRIDE`` (each meta-seed trains on its own training tasks).
Override dicts may use dotted keys (``learned.teleport.exact: false``). The one key of these
dicts that is not a MetaTrainConfig field is ``selection`` (:class:`~metatele.studies.selection.SelectionConfig`
fields, or ``null``): keep the snapshot that scores best on validation seeds
(:func:`~metatele.studies.selection.meta_train_selected`) instead of the last one.

A baseline with ``tune_horizons: true`` stands for one tuned baseline per reported step ``h``,
named :func:`horizon_name` (``adam(tuned)`` → ``adam(tuned@300)``), each tuned for ``h`` steps;
``tune_steps: h`` sets one baseline's tuning horizon. In comparisons, targets and
``teleport_help``, a name with ``@*`` (``adam(tuned@*)``) means "at step ``h``, the ``@h`` one".
"""
from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from ..optimizers.baselines import BaselineConfig
from ..configs import ConfigError, apply_overrides, from_dict, load_yaml_mapping, merge_overrides, require, resolve_config, to_dict
from ..tasks.family import VALIDATION_SEED_OFFSET, TaskConfig, training_seeds, unseen_seeds, validation_seeds
from ..meta.config import MetaTrainConfig
from ..release.checkpoint import CheckpointError, read_metadata
from ..release.pretrained import resolve_checkpoint
from ..evaluation.identity import MethodId, baseline_id, learned_id
from ..evaluation.tuning import DEFAULT_LRS, OBJECTIVES, TuneResult, grid_search
from .selection import SelectionConfig
from .protocol_parts import HelpPair, Speedup, Target, Transfer, TransferTarget, at_horizon, horizon_name, parse_named  # noqa: F401

EVAL_SPLITS = ("test", "validation")
SEED_STRIDE = 1_000_000  #: meta-seed k trains on seeds from ``train_seed_start + k * SEED_STRIDE``
#: meta-seeds stay below this, so their training seeds stay below the validation seeds
MAX_META_SEED = VALIDATION_SEED_OFFSET // SEED_STRIDE - 1


def expand(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Dotted keys to nested dicts: ``{"learned.lstm.hidden": 64}`` → ``{"learned": {"lstm": {"hidden": 64}}}``
    (:func:`metatele.configs.merge_overrides` on an empty dict)."""
    return merge_overrides({}, overrides or {})


# -- the protocol -----------------------------------------------------------------------------
@dataclass
class Setting:
    """A task family to benchmark on, with optional scale overrides for its learned methods."""

    task: TaskConfig = field(default_factory=TaskConfig)
    label: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.task, dict):
            self.task = from_dict(TaskConfig, self.task, "task")
        require(isinstance(self.overrides, dict) and isinstance(self.method_overrides, dict), "overrides",
                "overrides and method_overrides must be mappings")
        self.label = self.label or f"{self.task.distribution} {self.task.dims}"


@dataclass
class Ablation:
    """One switch: ``method`` (a learned method's name) with ``overrides``, against ``method`` without."""

    method: str = "LSTM(update+tele)"
    overrides: dict[str, Any] = field(default_factory=dict)
    question: str = ""


@dataclass
class Tuning:
    """Grid search of the ``tune: true`` baselines' learning rate on training seeds."""

    seeds: int = 20
    seed_start: int = 0
    steps: int = 100
    objective: str = "mean_log_loss_final"
    lrs: list[float] | None = None

    def __post_init__(self) -> None:
        require(self.objective in OBJECTIVES, "tuning.objective", f"must be one of {OBJECTIVES}, got {self.objective!r}")
        require(self.seeds >= 1 and self.steps >= 1, "tuning", f"seeds and steps must be ≥ 1, got {self.seeds}, {self.steps}")


@dataclass
class BenchmarkProtocol:
    """What ``metatele benchmark`` runs (see ``metatele/defaults/benchmark.yaml``).

    Attributes:
        name, description: shown in the report.
        out, report: default output folder and report path (``None`` report: ``OUT/RESULTS.md``).
        device: where everything runs. workers: processes for the learned runs (``None``: one per
            available CPU, one on CUDA); threads: torch threads per worker (``None``: CPUs / workers).
        meta_seeds: meta-training seeds of every learned method.
        test_seeds, test_seed_start: ``unseen_seeds(test_seeds, test_seed_start)``, shared by all.
        eval_split: ``test`` (the unseen test seeds: for reporting) or ``validation``
            (``validation_seeds(test_seeds, test_seed_start)``: for selecting configurations,
            see :mod:`metatele.studies.search`).
        steps: steps reported (evaluation runs to the largest); alpha: significance level.
        base: MetaTrainConfig overrides shared by every learned run.
        settings, methods, baselines: name → :class:`Setting` / overrides / BaselineConfig fields
            (plus ``tune: true`` to grid-tune ``lr``, with the baseline's teleport schedule on, for
            ``tune_steps`` steps (default ``tuning.steps``); ``tune_horizons: true`` expands a
            baseline into one tuned for each reported step, see :func:`horizon_name`).
        comparisons: ``[a, b]`` pairs stated in every setting that has both.
        ablation_setting, ablation_base, ablations: where the ablations run, their shared scale
            overrides, and name → :class:`Ablation`.
        ablation_reference: overrides applied to both arms of every ablation after the method's
            own, e.g. to ablate each switch from the paper's configuration when the main methods
            use selected switches.
        transfer: :class:`Transfer` (``None``: no transfer sections).
        divergence_steps: steps at which the report states every method's diverged fraction
            (per meta-seed too); each ≤ the last of ``steps``.
        targets: :class:`Target` list, checked in the report's targets table.
        teleport_help: :class:`HelpPair` list, the generated "Does learning to teleport help?"
            section (empty: no such section). Their pairs, and the ``no_worse`` targets', are
            compared in every section like ``comparisons``.
    """

    name: str = "benchmark"
    description: str = ""
    out: str = "runs/benchmark"
    report: str | None = None
    device: str = "cpu"
    workers: int | None = None
    threads: int | None = None
    meta_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    test_seeds: int = 100
    test_seed_start: int = 0
    eval_split: str = "test"
    steps: list[int] = field(default_factory=lambda: [10, 30, 100])
    alpha: float = 0.05
    base: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    tuning: Tuning = field(default_factory=Tuning)
    comparisons: list[list[str]] = field(default_factory=list)
    ablation_setting: str | None = None
    ablation_base: dict[str, Any] = field(default_factory=dict)
    ablation_reference: dict[str, Any] = field(default_factory=dict)
    ablations: dict[str, Any] = field(default_factory=dict)
    transfer: Transfer | None = None
    divergence_steps: list[int] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    teleport_help: list[HelpPair] = field(default_factory=list)
    speedup: list[Speedup] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.settings = {k: v if isinstance(v, Setting) else parse_named(Setting, v, f"settings.{k}")
                         for k, v in (self.settings or {}).items()}
        self.ablations = {k: v if isinstance(v, Ablation) else parse_named(Ablation, v, f"ablations.{k}")
                          for k, v in (self.ablations or {}).items()}
        self.methods, self.baselines = dict(self.methods or {}), dict(self.baselines or {})
        if isinstance(self.transfer, dict):
            self.transfer = parse_named(Transfer, self.transfer, "transfer")
        self.targets = [t if isinstance(t, Target) else parse_named(Target, t, f"targets[{i}]")
                        for i, t in enumerate(self.targets or [])]
        self.teleport_help = [h if isinstance(h, HelpPair) else parse_named(HelpPair, h, f"teleport_help[{i}]")
                              for i, h in enumerate(self.teleport_help or [])]
        self.speedup = [x if isinstance(x, Speedup) else parse_named(Speedup, x, f"speedup[{i}]")
                        for i, x in enumerate(self.speedup or [])]
        ms = self.meta_seeds
        require(isinstance(ms, list) and ms and len(set(ms)) == len(ms)
                and all(isinstance(s, int) and 0 <= s < MAX_META_SEED for s in ms),
                "meta_seeds", f"must be a non-empty list of distinct integers in [0, {MAX_META_SEED}), got {ms!r}")
        require(isinstance(self.test_seeds, int) and self.test_seeds >= 2, "test_seeds", f"need ≥ 2, got {self.test_seeds!r}")
        require(self.eval_split in EVAL_SPLITS, "eval_split", f"must be one of {EVAL_SPLITS}, got {self.eval_split!r}")
        st = self.steps
        require(isinstance(st, list) and st and all(isinstance(s, int) and s >= 1 for s in st) and st == sorted(set(st)),
                "steps", f"must be increasing positive integers, got {st!r}")
        require(0 < self.alpha < 1, "alpha", f"must be in (0, 1), got {self.alpha}")
        self.horizon_groups: dict[str, list[str]] = {}  # a tune_horizons baseline → its per-horizon names
        self.baselines = self._expand_horizons(self.baselines)
        require(bool(self.settings) and "ablations" not in self.settings, "settings",
                "name at least one setting ('ablations' is reserved for the ablation section)")
        for k in ("workers", "threads"):
            v = getattr(self, k)
            require(v is None or (isinstance(v, int) and v >= 1), k, f"must be a positive integer or null, got {v!r}")
        names = set(self.methods) | set(self.baselines)
        require(len(names) == len(self.methods) + len(self.baselines), "baselines", "names must differ from method names")
        for pair in self.comparisons:
            require(isinstance(pair, list) and len(pair) == 2 and all(self._known(p) for p in pair), "comparisons",
                    f"each must be [a, b] with names from methods/baselines {sorted(names)} (or a pattern "
                    f"'<baseline>@*' of a tune_horizons baseline), got {pair!r}")
        for i, h in enumerate(self.teleport_help):
            require(self._known(h.a) and self._known(h.b), f"teleport_help[{i}]",
                    f"a and b must name methods/baselines {sorted(names)}, got {h.a!r}, {h.b!r}")
        for i, x in enumerate(self.speedup):
            require(self._known(x.a) and all(self._known(b) for b in x.baselines), f"speedup[{i}]",
                    f"a and baselines must name methods/baselines {sorted(names)}, got {x.a!r}, {x.baselines!r}")
            require(all(h <= self.steps[-1] for h in x.at), f"speedup[{i}].at", f"must be ≤ {self.steps[-1]}, got {x.at}")
        for t in self.targets:
            require(self._known(t.a) and (t.b is None or self._known(t.b)), f"targets.{t.name}",
                    f"a and b must name methods/baselines {sorted(names)}, got {t.a!r}, {t.b!r}")
        last = self.steps[-1]
        ds = self.divergence_steps
        require(isinstance(ds, list) and all(isinstance(s, int) and 1 <= s <= last for s in ds), "divergence_steps",
                f"must be steps in [1, {last}] (evaluation runs to the last of steps), got {ds!r}")
        for t in self.targets:
            require(all(s <= last for s in t.steps), f"targets.{t.name}.steps", f"must be ≤ {last}, got {t.steps}")
        if self.transfer is not None:
            tr = self.transfer
            require(tr.setting in self.settings, "transfer.setting",
                    f"must name a setting {sorted(self.settings)}, got {tr.setting!r}")
            bad = sorted(set(tr.methods or []) - set(self.methods))
            require(not bad, "transfer.methods", f"unknown methods {bad}; the protocol has {sorted(self.methods)}")
            clash = sorted(set(self.transfer_sections()) & (set(self.settings) | {"ablations"}))
            require(not clash, "transfer.targets", f"section names {clash} clash with settings")
        for n, s in self.settings.items():
            bad = set(s.method_overrides) - set(self.methods)
            require(not bad, f"settings.{n}.method_overrides", f"unknown methods {sorted(bad)}")
        if self.ablations:
            require(self.ablation_setting in self.settings, "ablation_setting",
                    f"must name a setting {sorted(self.settings)}, got {self.ablation_setting!r}")
            for n, a in self.ablations.items():
                require(a.method in self.methods, f"ablations.{n}.method", f"must name a method {sorted(self.methods)}, got {a.method!r}")
                a.question = a.question or n
        for n in self.baselines:  # validate every config now, before hours of work
            self.baseline(n)
        for s in self.settings:
            for m in self.methods:
                self.learned_config(s, m, self.meta_seeds[0])
                self.selection(s, m)
        for n in self.ablations:
            self.learned_config(self.ablation_setting, self.ablations[n].method, self.meta_seeds[0], ablation=n)
            self.selection(self.ablation_setting, self.ablations[n].method, ablation=n)

    def eval_seeds(self) -> list[int]:
        """The seeds every method is evaluated on (test or validation split)."""
        split = unseen_seeds if self.eval_split == "test" else validation_seeds
        return list(split(self.test_seeds, self.test_seed_start))

    def _expand_horizons(self, baselines: dict[str, Any]) -> dict[str, Any]:
        """Each ``tune_horizons: true`` baseline → one ``tune_steps: h`` baseline per reported step."""
        out: dict[str, Any] = {}
        for name, spec in baselines.items():
            spec = dict(spec or {})
            horizons = spec.pop("tune_horizons", False)
            require(isinstance(horizons, bool), f"baselines.{name}.tune_horizons", f"must be true or false, got {horizons!r}")
            if not horizons:
                out[name] = spec
                continue
            require(spec.get("tune", True) and "tune_steps" not in spec, f"baselines.{name}",
                    "tune_horizons tunes for each reported step: it needs tune (not false) and no tune_steps")
            for h in self.steps:
                out[horizon_name(name, h)] = {**spec, "tune": True, "tune_steps": h}
            self.horizon_groups[name] = [horizon_name(name, h) for h in self.steps]
        return out

    def method_names(self, names: list[str]) -> list[str]:
        """``names`` with each ``tune_horizons`` baseline's name replaced by its per-horizon names
        (``adam(tuned)`` → ``adam(tuned@10)``, ``adam(tuned@30)``, …), e.g. for ``--methods``."""
        return [x for n in names for x in self.horizon_groups.get(n, [n])]

    def _known(self, name: str) -> bool:
        """Whether ``name`` is a method, a baseline, or a ``@*`` pattern that some step resolves."""
        names = set(self.methods) | set(self.baselines)
        if "@*" in name:
            return any(at_horizon(name, s) in names for s in self.steps)
        return name in names

    def extra_pairs(self) -> list[list[str]]:
        """The pairs that :attr:`teleport_help` and the ``no_worse`` targets need compared, beyond
        :attr:`comparisons` (in that order, each once)."""
        pairs = [[h.a, h.b] for h in self.teleport_help] + [[t.a, t.b] for t in self.targets if t.rule == "no_worse"]
        out: list[list[str]] = []
        for p in pairs:
            if p not in self.comparisons and p not in out:
                out.append(p)
        return out

    def report_divergence_steps(self) -> list[int]:
        """The steps whose diverged fractions results record: :attr:`divergence_steps` and those
        of the ``diverged_at_most`` targets."""
        extra = {s for t in self.targets if t.rule == "diverged_at_most" for s in t.steps}
        return sorted(set(self.divergence_steps) | extra)

    def transfer_sections(self) -> dict[str, TransferTarget]:
        """Section name (``transfer-<target>``) → target task of the transfer study."""
        return {f"transfer-{k}": t for k, t in self.transfer.targets.items()} if self.transfer else {}

    def _merged(self, setting: str, method: str, ablation: str | None, reference: bool) -> dict[str, Any]:
        s = self.settings[setting]
        parts = [self.base, s.overrides] + ([self.ablation_base] if ablation or reference else [])
        parts += [self.methods[method], s.method_overrides.get(method, {})]
        if ablation or reference:
            parts.append(self.ablation_reference)
        if ablation and not reference:
            parts.append(self.ablations[ablation].overrides)
        d: dict[str, Any] = {}
        for p in parts:
            d = merge_overrides(d, p)
        return d

    def selection(self, setting: str, method: str, ablation: str | None = None,
                  reference: bool = False) -> SelectionConfig | None:
        """The snapshot selection of one run (the ``selection`` key of its overrides), or ``None``."""
        sel = self._merged(setting, method, ablation, reference).get("selection")
        if sel is None:
            return None
        where = f"{setting}/{method}" + (f"/ablation {ablation}" if ablation else "") + ": selection"
        require(isinstance(sel, dict), where, f"must be a mapping of {sorted(to_dict(SelectionConfig()))} or null")
        return parse_named(SelectionConfig, sel, where)

    def pretrained(self, method: str, meta_seed: int) -> Path | None:
        """The checkpoint a ``pretrained`` method evaluates for ``meta_seed`` (``None``: the method
        is meta-trained by the benchmark). ``pretrained`` names a file or a shipped optimizer
        (``metatele pretrained``), with ``{seed}`` standing for the meta-seed, or maps each
        meta-seed to its file (``{0: a.safetensors, 1: b.safetensors}``); relative paths are taken
        from the current folder."""
        spec = (self.methods.get(method) or {}).get("pretrained")
        if spec is None:
            return None
        where = f"methods.{method}.pretrained"
        if isinstance(spec, dict):
            bad = [k for k in spec if not isinstance(k, int) or isinstance(k, bool)]
            require(not bad, where, f"a mapping's keys are meta-seeds (integers), got {bad}")
            require(meta_seed in spec, where, f"names no checkpoint for meta-seed {meta_seed} (it maps "
                    f"meta-seeds {sorted(spec, key=str)})")
            spec = spec[meta_seed]
            require(isinstance(spec, str) and spec, f"{where}.{meta_seed}", f"must be a checkpoint path, got {spec!r}")
            return resolve_checkpoint(spec)
        require(isinstance(spec, str) and spec, where, "must be a checkpoint path (with {seed} for the meta-seed) "
                f"or a mapping of meta-seed to path, got {spec!r}")
        return resolve_checkpoint(spec.format(seed=meta_seed))

    def initialisation(self, method: str) -> bool:
        """Whether the ``pretrained`` method ``method`` stands for its checkpoints' initialisations
        (``initialisation: true``): each one's meta-parameters before its first meta-step, rebuilt
        from its config, so that a report can say whether meta-training learned."""
        spec = self.methods.get(method) or {}
        flag = spec.get("initialisation", False)
        where = f"methods.{method}.initialisation"
        require(isinstance(flag, bool), where, f"must be true or false, got {flag!r}")
        return flag  # (on a meta-trained method it is an unknown meta-training option, refused as such)

    def learned_config(self, setting: str, method: str, meta_seed: int, ablation: str | None = None,
                       reference: bool = False) -> MetaTrainConfig:
        """The MetaTrainConfig of one run; ``ablation``: that arm, or its reference if ``reference``.
        A ``pretrained`` method's is its checkpoint's config, on the setting's task."""
        s = self.settings[setting]
        path = self.pretrained(method, meta_seed)
        if path is not None:
            require(not ablation and not reference, f"ablations: {method}", "a pretrained method cannot be ablated")
            extra = sorted(set(self.methods[method]) - {"pretrained", "initialisation"})
            require(not extra, f"methods.{method}", f"a pretrained method takes no meta-training options, got {extra}")
            try:
                saved = read_metadata(path)["config"]
            except (CheckpointError, OSError) as e:
                raise ConfigError(f"methods.{method}.pretrained: {e}") from None
            return MetaTrainConfig.from_saved({**saved, "task": to_dict(s.task), "mix": None, "device": self.device})
        d = self._merged(setting, method, ablation, reference)
        d.pop("selection", None)
        d.update(task=to_dict(s.task), seed=meta_seed, device=self.device,
                 train_seed_start=int(d.get("train_seed_start", 0)) + meta_seed * SEED_STRIDE)
        where = f"{setting}/{method}" + (f"/ablation {ablation}" if ablation else "")
        try:
            return MetaTrainConfig.from_dict(d)
        except (ConfigError, TypeError) as e:
            raise ConfigError(f"{where}: {e}") from None

    def baseline(self, name: str) -> tuple[BaselineConfig, bool]:
        """``(BaselineConfig, tune)`` of a baseline."""
        spec = dict(self.baselines[name] or {})
        tune = bool(spec.pop("tune", False))
        steps = spec.pop("tune_steps", None)
        require(steps is None or (tune and isinstance(steps, int) and steps >= 1), f"baselines.{name}.tune_steps",
                f"must be a positive integer on a tune: true baseline, got {steps!r}")
        try:
            return from_dict(BaselineConfig, spec, f"baselines.{name}"), tune
        except TypeError as e:
            raise ConfigError(f"baselines.{name}: {e}") from None

    def tune(self, name: str, task: TaskConfig, device: Any = None) -> TuneResult:
        """Tune the ``tune: true`` baseline ``name`` on ``task`` as the benchmark does: a grid
        search on the protocol's ``tuning.seeds`` training seeds for its :meth:`tune_steps`."""
        cfg, tune = self.baseline(name)
        require(tune, f"baselines.{name}", "is not tuned (tune: true), so it has no tuned rate")
        return grid_search(cfg, task, training_seeds(self.tuning.seeds, self.tuning.seed_start), self.tune_steps(name),
                           lrs=self.tuning.lrs or DEFAULT_LRS, objective=self.tuning.objective, device=device)

    def tune_steps(self, name: str) -> int:
        """The tuning horizon of a ``tune: true`` baseline: its ``tune_steps``, else ``tuning.steps``."""
        return int((self.baselines[name] or {}).get("tune_steps") or self.tuning.steps)

    def method_id(self, name: str, section: str | None = None) -> MethodId:
        """The identity of a method, baseline or ablation arm (``section='ablations'``) of the
        protocol, from its config: a learned run's variant, a baseline's teleport and the
        baseline it adds that teleport to (the one with the same config and no teleport)."""
        if name in self.baselines:
            cfg, tune = self.baseline(name)
            if cfg.teleport is None:
                return baseline_id(name)
            plain = next((b for b in self.baselines if self.baseline(b) == (replace(cfg, teleport=None), tune)
                          and (not tune or self.tune_steps(b) == self.tune_steps(name))), None)
            return baseline_id(name, teleport=True, base=plain)
        if section == "ablations":
            method, ablation, reference = self.ablation_arms()[name]
            config = self.learned_config(self.ablation_setting, method, self.meta_seeds[0], ablation, reference)
        else:
            config = self.learned_config(section or next(iter(self.settings)), name, self.meta_seeds[0])
        return learned_id(name, config.learned.variant, candidate_of(name))

    def ablation_arms(self, names: list[str] | None = None) -> dict[str, tuple[str, str, bool]]:
        """Arm name → ``(method, ablation, is_reference)`` for the ablations ``names`` (default:
        all): one reference arm (``"<method> [reference]"``) per ablated method, then the arms."""
        chosen = {n: a for n, a in self.ablations.items() if names is None or n in names}
        arms: dict[str, tuple[str, str, bool]] = {}
        for n, a in chosen.items():
            arms.setdefault(f"{a.method} [reference]", (a.method, n, True))
        arms.update({n: (a.method, n, False) for n, a in chosen.items()})
        return arms


def candidate_of(name: str) -> str | None:
    """The candidate (tag) of a protocol's method: ``skip`` for ``LSTM(update+tele) [skip]``.

    A protocol names a method's candidate in brackets at the end of its name; this is the one
    place that reads it, when the protocol is turned into :class:`MethodId` records.
    """
    head, sep, tail = name.rpartition(" [")
    return tail[:-1] if sep and head and tail.endswith("]") and len(tail) > 1 else None


def load_protocol(path: str | os.PathLike, overrides: list[str] | None = None) -> tuple[BenchmarkProtocol, dict[str, Any]]:
    """Read a protocol YAML, apply ``key=value`` overrides; returns the protocol and its raw dict."""
    data = load_yaml_mapping(str(resolve_config(path, "protocol")), "protocol")
    data = apply_overrides(data, overrides or [])
    return from_dict(BenchmarkProtocol, data), data
