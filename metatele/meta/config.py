"""The meta-training configuration: one dataclass, defaults = the paper's values.

The same object is read from YAML (a file, or a shipped default in ``metatele/defaults/``), overridden from the command
line (``--set key=value``), saved inside checkpoints and sent to wandb as ``config``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..configs import (ConfigError, apply_overrides, check_fields, from_dict, is_int, is_number, load_yaml_mapping,
                       move_keys, require, resolve_config, to_dict, training_names)
from ..optimizers.coordinatewise import CoordinatewiseConfig
from ..optimizers.learned import VARIANTS, LearnedConfig, drop_options, inapplicable_options
from ..tasks.family import VALIDATION_SEED_OFFSET, TaskConfig
from ..tasks.mixture import TaskMix
from .schedules import HORIZONS, TRUNCATIONS, planned_meta_steps
from .snapshots import ValidationConfig

META_LOSSES = ("sum", "mean_log")
#: what the meta-loss sums: the training loss of the inner problem, or (digits) its validation loss
META_OBJECTIVES = ("train", "validation")
#: how the meta-gradient is estimated: truncated backpropagation, or persistent evolution strategies
ESTIMATORS = ("tbptt", "pes")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class MetaTrainConfig:
    """Everything a meta-training run needs.

    Attributes:
        task: the inner problems (dims, distribution).
        learned: the variant and its LSTMs.
        trajectories: training trajectories, each from a fresh training seed and trained for
            ``steps`` inner steps (exactly this many: seeds ``train_seed_start`` to
            ``train_seed_start + trajectories − 1``; paper: 700 for update+tele, 600 for update,
            30 for lr+tele).
        steps: inner steps per trajectory (paper: 100, or 300 for lr+tele); the longest
            horizon when ``horizon`` is ``log_uniform``.
        horizon: ``fixed`` (every trajectory runs ``steps``) or ``log_uniform`` (each
            trajectory's horizon drawn log-uniformly in ``[steps_min, steps]`` from its seed).
        steps_min: the shortest horizon of ``log_uniform`` horizons.
        unroll: truncation length K (paper: 10).
        truncation: ``fixed`` (every unroll has K steps) or ``log_uniform`` (each unroll's
            length drawn log-uniformly in ``[unroll, unroll_max]``).
        unroll_max: upper bound of the log-uniform truncation schedule (and of the curriculum).
        curriculum: meta-steps over which the longest unroll grows geometrically from
            ``unroll`` to ``unroll_max`` (0: no curriculum; see :mod:`metatele.meta.schedules`).
        augment_scale: task augmentation: every training task's data, targets (regression) and
            initial weights are rescaled by factors drawn log-uniformly in ``[1/s, s]`` from its
            seed (1: none; see :mod:`metatele.tasks.augment`).
        batch_size: B trajectories advanced together.
        lr_update, lr_teleport: Adam rates of m1 and m2 (paper: 1e-3, 1e-4); each applies only to a
            variant with that learned net (:func:`inapplicable_rates`).
        meta_loss: ``sum`` of inner losses over the unroll (paper) or ``mean_log`` (mean of
            log-losses).
        late_weight: weighting towards late steps: the meta-loss term of inner step ``t`` of a
            trajectory of horizon ``H`` is multiplied by ``(p + 1) ((t + 1) / H)^p`` (mean ≈ 1
            over a trajectory; ``p = 0``: uniform, the paper's).
        normalize: divide every task's losses by its loss at the start of its trajectory.
        second_order: differentiate through the gradient the LSTMs read (``create_graph``).
        stagger: spread the first trajectories' start steps so that the batch is not in lockstep.
        grad_clip: clip the meta-gradient norm (``None``: no clipping).
        diverge_patience: stop after this many consecutive meta-steps in which every
            trajectory diverged.
        seed: seed of the meta-parameter initialisation (and anything else random).
        train_seed_start: first training-task seed; trajectory i uses ``train_seed_start + i``.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``...
        dtype: ``float32`` or ``float64``.
        log_every: meta-steps between host reads of the metrics (and progress updates).
        allow_non_symmetric: train a teleporting variant even where its group action is not a
            symmetry of the loss (more samples than a teleported pair's layer input is wide, see
            :func:`non_symmetric_pairs`). Refused by default; with it, training warns once and
            records the relative loss change of a teleport in the history and the checkpoint.
            Setting it for a variant that never teleports (``update``, ``lr``) is an error.
        meta_objective: ``train`` (the inner training loss) or ``validation`` (digits: the loss
            on each task's validation images, i.e. learning to teleport for generalization).
        estimator: the meta-gradient estimator: ``tbptt`` (backpropagation through each truncated
            unroll) or ``pes`` (persistent evolution strategies: antithetic perturbations of the
            meta-parameters, no backward pass, unbiased for the whole trajectory; see
            :mod:`metatele.meta.pes`).
        pes_sigma: PES: standard deviation of the Gaussian perturbation of every meta-parameter.
        pes_groups: PES: independent perturbations per meta-step; the batch's antithetic pairs
            are dealt round-robin into this many groups, one forward pass per group and sign.
        max_meta_steps: the run's budget in meta-steps: it ends after this many even if
            trajectories remain (``None``: when all ``trajectories`` are trained).
        max_seconds: the run's budget in wall-clock seconds of meta-training, summed over every
            segment of a resumed run and not counting validation; it ends after the meta-step that
            exceeds it (``None``: none).
        validation: validation on held-out seeds during the run: the best snapshot and an average
            of recent ones (:mod:`metatele.meta.snapshots`; ``every: 0``, the default: none).
        mix: a task mixture for a generalist (:class:`~metatele.tasks.mixture.TaskMix`): ``task``
            is then the reference architecture, trained on with the mixture's drawn ones
            (:mod:`metatele.meta.mixture`); ``None``: train on ``task`` alone.
        init_from: a warm start: a training state of another run (a ``state-*.safetensors`` file
            of its ``training_state/``) whose meta-parameters and meta-optimizer (Adam) state this
            run starts from, instead of a fresh initialisation (:mod:`metatele.meta.warmstart`).
            Its learned optimizer must be this run's, but for the safeguard settings
            (``learned.coordinatewise.update_safeguard``, ...); everything else (tasks, seeds,
            rates, budget) is this run's. ``None``: no warm start.
    """

    task: TaskConfig = field(default_factory=TaskConfig)
    learned: LearnedConfig = field(default_factory=LearnedConfig)
    trajectories: int = 700
    steps: int = 100
    horizon: str = "fixed"
    steps_min: int = 1
    unroll: int = 10
    truncation: str = "fixed"
    unroll_max: int = 100
    curriculum: int = 0
    augment_scale: float = 1.0
    batch_size: int = 100
    lr_update: float = 1e-3
    lr_teleport: float = 1e-4
    meta_loss: str = "sum"
    late_weight: float = 0.0
    normalize: bool = False
    second_order: bool = False
    stagger: bool = False
    grad_clip: float | None = None
    diverge_patience: int = 3
    seed: int = 0
    train_seed_start: int = 0
    device: str = "auto"
    dtype: str = "float32"
    log_every: int = 1
    allow_non_symmetric: bool = False
    meta_objective: str = "train"
    estimator: str = "tbptt"
    pes_sigma: float = 0.01
    pes_groups: int = 1
    max_meta_steps: int | None = None
    max_seconds: float | None = None
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    mix: TaskMix | None = None
    init_from: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.mix, dict):
            self.mix = from_dict(TaskMix, self.mix, "mix")
        if isinstance(self.validation, dict):
            self.validation = from_dict(ValidationConfig, self.validation, "validation")
        if isinstance(self.task, dict):
            self.task = from_dict(TaskConfig, self.task, "task")
        if isinstance(self.learned, dict):
            self.learned = from_dict(LearnedConfig, self.learned, "learned")
        check_fields(self)
        for name in ("trajectories", "steps", "unroll", "batch_size", "unroll_max", "log_every", "diverge_patience"):
            v = getattr(self, name)
            require(is_int(v) and v >= 1, name, f"must be a positive integer, got {v!r}")
        require(self.truncation in TRUNCATIONS, "truncation", f"must be one of {TRUNCATIONS}, got {self.truncation!r}")
        require(self.unroll_max >= self.unroll, "unroll_max", f"must be ≥ unroll ({self.unroll}), got {self.unroll_max}")
        require(self.horizon in HORIZONS, "horizon", f"must be one of {HORIZONS}, got {self.horizon!r}")
        require(is_int(self.steps_min) and 1 <= self.steps_min <= self.steps, "steps_min",
                f"must be an integer in [1, steps = {self.steps}], got {self.steps_min!r}")
        require(is_int(self.curriculum) and self.curriculum >= 0, "curriculum",
                f"must be a non-negative integer (meta-steps), got {self.curriculum!r}")
        require(is_number(self.augment_scale) and self.augment_scale >= 1, "augment_scale",
                f"must be a number ≥ 1 (1: no augmentation), got {self.augment_scale!r}")
        require(is_number(self.late_weight) and self.late_weight >= 0, "late_weight",
                f"must be a number ≥ 0, got {self.late_weight!r}")
        require(self.lr_update > 0, "lr_update", f"must be > 0, got {self.lr_update}")
        require(self.lr_teleport > 0, "lr_teleport", f"must be > 0, got {self.lr_teleport}")
        for name, why in inapplicable_rates(self.learned):
            require(getattr(self, name) == RATE_DEFAULTS[name], name, f"does not apply to this run: {why}; remove it")
        require(self.meta_loss in META_LOSSES, "meta_loss", f"must be one of {META_LOSSES}, got {self.meta_loss!r}")
        require(self.grad_clip is None or self.grad_clip > 0, "grad_clip", f"must be > 0 or null, got {self.grad_clip}")
        require(self.dtype in DTYPES, "dtype", f"must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        require(isinstance(self.seed, int) and self.seed >= 0, "seed", f"must be a non-negative integer, got {self.seed!r}")
        require(0 <= self.train_seed_start < VALIDATION_SEED_OFFSET, "train_seed_start",
                f"must lie in the training split below the validation seeds, [0, {VALIDATION_SEED_OFFSET}), "
                f"got {self.train_seed_start}")
        require(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"), "device",
                f"must be auto, cpu, cuda[:i] or mps, got {self.device!r}")
        require(self.meta_objective in META_OBJECTIVES, "meta_objective",
                f"must be one of {META_OBJECTIVES}, got {self.meta_objective!r}")
        require(self.meta_objective == "train" or self.task.kind.has_validation, "meta_objective",
                f"'validation' needs a task family with validation data (digits), got {self.task.family!r}")
        require(isinstance(self.allow_non_symmetric, bool), "allow_non_symmetric",
                f"must be true or false, got {self.allow_non_symmetric!r}")
        require(self.learned.uses_teleport or not self.allow_non_symmetric, "allow_non_symmetric",
                f"does not apply to this run: variant: {self.learned.variant} never teleports; remove it")
        if self.learned.uses_teleport and not self.allow_non_symmetric:
            bad = non_symmetric_pairs(self.task)
            require(not bad, "task.dims", f"{describe_non_symmetric(self.task, bad)}; the {self.learned.variant} "
                    "variant's teleport would then change the loss. Use at least as many units as samples in "
                    "every teleported layer input, or set allow_non_symmetric: true to train anyway (the "
                    "loss change is then measured and recorded)")
        require(self.max_meta_steps is None or (is_int(self.max_meta_steps) and self.max_meta_steps >= 1),
                "max_meta_steps", f"must be a positive integer or null, got {self.max_meta_steps!r}")
        require(self.max_seconds is None or (is_number(self.max_seconds) and math.isfinite(self.max_seconds)
                                             and self.max_seconds > 0),
                "max_seconds", f"must be a finite number of seconds > 0 or null, got {self.max_seconds!r}")
        require(self.mix is None or self.task.family == "regression", "mix",
                f"a task mixture draws regression networks; the reference task must be one, got family {self.task.family!r}")
        require(self.mix is None or self.learned.arch == "coordinatewise", "mix",
                "a task mixture needs an optimizer for any network: learned.arch: coordinatewise")
        require(self.mix is None or self.max_meta_steps is not None, "max_meta_steps",
                "a task mixture run needs a budget in meta-steps (its groups take turns; set max_meta_steps)")
        require(self.init_from is None or (isinstance(self.init_from, str) and self.init_from.strip() != ""),
                "init_from", f"must be the path of a training state or null, got {self.init_from!r}")
        self._validate_estimator()

    def _validate_estimator(self) -> None:
        require(self.estimator in ESTIMATORS, "estimator", f"must be one of {ESTIMATORS}, got {self.estimator!r}")
        require(is_number(self.pes_sigma) and math.isfinite(self.pes_sigma) and self.pes_sigma > 0, "pes_sigma",
                f"must be a finite number > 0, got {self.pes_sigma!r}")
        batch = min(self.batch_size, self.trajectories)
        require(is_int(self.pes_groups) and 1 <= self.pes_groups <= batch, "pes_groups",
                f"must be an integer in [1, {batch}] (the batch, min(batch_size, trajectories)), got {self.pes_groups!r}")
        require(not (self.estimator == "pes" and self.second_order), "second_order",
                "must be false with estimator: pes (PES does not differentiate through the unroll)")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def meta_steps(self) -> int:
        """Meta-steps that train exactly ``trajectories`` trajectories of ``steps`` inner steps.

        The batch ``B = min(batch_size, trajectories)`` is refilled with fresh training seeds
        until ``trajectories`` have started; slots then fall idle, and the run ends when the last
        trajectory finishes. This is the plan when no trajectory diverges (a diverged one is
        replaced early, which can end the run sooner); the engine itself stops when it is done.
        With ``max_meta_steps``, at most that many (not simulated when the seeds cannot run out
        within the budget).
        """
        cap = self.max_meta_steps
        B = min(self.batch_size, self.trajectories)
        if cap is not None and (self.mix is not None or self.trajectories >= (cap + 1) * B):
            return cap  # a slot starts at most one trajectory per meta-step: the seeds cannot run out
        planned = planned_meta_steps(self.trajectories, min(self.batch_size, self.trajectories), self.steps,
                                  self.unroll, self.truncation, self.unroll_max, self.stagger, self.seed,
                                  self.horizon, self.steps_min, self.train_seed_start, self.curriculum)
        return planned if cap is None else min(planned, cap)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MetaTrainConfig":
        return from_dict(cls, data)

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> "MetaTrainConfig":
        """The config saved in a checkpoint or training state.

        Files written before options were checked for applying to the run may hold options
        that the run never read (``learned.coordinatewise.*`` of an ``arch: paper`` run whose
        protocol set them for every method, m1's ``coordinatewise.lr`` under ``variant: tele``,
        m2's ``coordinatewise.tele_norm_init`` under ``variant: update``): they did not affect
        it, and take their defaults here rather than being refused (:func:`inapplicable_options`),
        as does an Adam rate of a net the variant does not have (``lr_teleport`` of an ``update``
        run, :func:`inapplicable_rates`), and ``allow_non_symmetric`` of a run that never
        teleports. Options that moved into a group since (the coordinatewise ``every``,
        ``gate``, ... into ``ablation``) are moved there.
        """
        learned = data.get("learned")
        if isinstance(learned, dict):
            learned = dict(learned)
            default = LearnedConfig()
            if isinstance(learned.get("coordinatewise"), dict):
                learned["coordinatewise"] = move_keys(CoordinatewiseConfig, learned["coordinatewise"],
                                                      "learned.coordinatewise")
            cw = learned.get("coordinatewise")
            for section, keys, _ in inapplicable_options(learned.get("arch", default.arch),
                                                         learned.get("variant", default.variant),
                                                         cw if isinstance(cw, dict) else None):
                if keys is None:
                    learned.pop(section, None)
                elif isinstance(learned.get(section), dict):
                    learned[section] = drop_options(learned[section], keys)
            data = {**data, "learned": learned}
            variant = learned.get("variant", default.variant)
            if variant in VARIANTS:
                never = LearnedConfig(variant=variant)
                data = {k: v for k, v in data.items() if k not in dict(inapplicable_rates(never))
                        and not (k == "allow_non_symmetric" and not never.uses_teleport)}
        return from_dict(cls, data)


#: the defaults of the Adam rates of m1 and m2 (those of :class:`MetaTrainConfig`)
RATE_DEFAULTS = {"lr_update": MetaTrainConfig.lr_update, "lr_teleport": MetaTrainConfig.lr_teleport}


def inapplicable_rates(learned: LearnedConfig) -> list[tuple[str, str]]:
    """``(rate, why)`` of the meta-training Adam rates that a run of ``learned`` does not use: that
    of m1 (``lr_update``) without a learned update, that of m2 (``lr_teleport``) without an m2
    (``variant: update``; the ``lr`` variant's m2 writes its step size and is meta-trained at
    ``lr_teleport`` although it never teleports). Setting one (to anything but its default) is an error."""
    out = []
    if learned.local_update != "learned":
        step = "learned.base" if learned.local_update == "base" else "η g, with the step size that m2 writes"
        out.append(("lr_update", f"it is the Adam rate of m1, and variant: {learned.variant} has no learned update "
                    f"(m1): its local step is {step}"))
    if not learned.uses_m2:
        out.append(("lr_teleport", f"it is the Adam rate of m2, and variant: {learned.variant} does not teleport "
                    "(no m2)"))
    return out


def non_symmetric_pairs(task: TaskConfig) -> list[tuple[int, int]]:
    """``(pair, input width)`` of every consecutive layer pair whose group action is not a symmetry.

    Pair ``m`` (0-based) teleports ``(W_{m+1}, W_{m+2})`` through the hidden layer between them;
    the action preserves the loss only if the pair's layer input (``[d_m, n]``, the data for
    ``m = 0``; ``[d_m + 1, n]`` with the row of ones of a biased layer) has a left inverse, i.e.
    ``n ≤ d_m`` (``n ≤ d_m + 1`` with biases), for ``dims = [n, d0, ..., dL]``. The rule itself is
    :meth:`TaskConfig.non_symmetric_pairs`; the width given here counts the row of ones.
    """
    return [(m, task.weight_shapes[m][1]) for m in task.non_symmetric_pairs()]


def describe_non_symmetric(task: TaskConfig, pairs: list[tuple[int, int]]) -> str:
    """A sentence naming the pairs of :func:`non_symmetric_pairs`, their widths and ``n``."""
    what = ", ".join(f"pair {m} (W_{m + 1}, W_{m + 2}: layer input width {d}{' with the bias row' if task.bias else ''})"
                     for m, d in pairs)
    return f"{what} {'is' if len(pairs) == 1 else 'are'} narrower than the n = {task.teleport_samples} samples of dims {task.dims}"


def load_config(path: str, overrides: list[str] | None = None) -> MetaTrainConfig:
    """Read a YAML config (a file, or a shipped default by name: ``update_tele``), apply
    ``key=value`` overrides, validate."""
    data = load_yaml_mapping(str(resolve_config(path, "training config", training_names())), "config")
    return MetaTrainConfig.from_dict(apply_overrides(data, overrides or []))


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available on this machine")
    return dev
