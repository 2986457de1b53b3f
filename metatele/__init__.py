"""metatele: learning to teleport.

LSTM meta-optimizers that take local steps (m1, :class:`UpdateLSTM`) and move a network's
weights along its symmetry orbits (m2, :class:`TeleportLSTM`), trained by truncated unrolled
differentiation through many batched gradient-descent trajectories on LeakyReLU networks.

The public names below are grouped as docs/README.md presents them: tasks, symmetry, teleport
strategies, meta-optimizers, meta-training, evaluation, checkpoints, generalization (digits).
"""
from __future__ import annotations

from ._version import __version__
from .configs import ConfigError, from_dict, to_dict

# tasks (docs/tasks.md): the inner problems, their families and seed splits, and the network
from .tasks.family import (TEST_SEED_OFFSET, VALIDATION_SEED_OFFSET, TaskBatch, TaskConfig, is_test_seed,
                           is_validation_seed, sample_tasks, training_seeds, unseen_seeds, validation_seeds)
from .tasks.mlp import (affine, append_ones_row, forward, join_bias, layer_inputs, loss_and_grads, mlp_loss, sigma,
                        sigma_inv, split_bias)
# symmetry (docs/symmetry.md): the group action and the teleport gradient
from .symmetry.action import SymmetryWarning, apply_pinv, group_action, input_qr, loss_change, teleport
from .symmetry.teleport_grad import teleport_gradient
# teleport strategies (docs/strategies.md) and hand-designed optimizers
from .symmetry.strategies import (GradientAscentTeleport, RandomTeleport, TeleportSchedule, TeleportStrategy,
                                  normalize_frobenius)
from .optimizers.baselines import BASELINES, BaselineConfig, HandDesigned, run_baseline
# meta-optimizers (docs/meta_optimizers.md, docs/coordinatewise.md)
from .optimizers.lstm import LSTMConfig, TeleportConfig, TeleportLSTM, UpdateLSTM
from .optimizers.coordinatewise import CoordinatewiseAblation, CoordinatewiseConfig, CoordinateUpdate, EquivariantTeleport
from .optimizers.learned import ARCHS, VARIANTS, LearnedConfig, LearnedOptimizer
from .optimizers.dropin import LearnedTeleportOptimizer
# meta-training (docs/meta_training.md)
from .meta.config import MetaTrainConfig, load_config
from .meta.engine import DivergenceError, UnrollEngine
from .meta.train import MetaTrainResult, meta_train
# evaluation (docs/protocol.md)
from .evaluation.evaluate import BaselineMethod, Curves, compare, evaluate
from .evaluation.stats import paired_comparison, summarize
from .evaluation.tuning import grid_search, hypergradient_tune, tune_all
# checkpoints
from .release.checkpoint import CheckpointError, load_checkpoint, load_optimizer, save_checkpoint
# generalization (docs/generalization.md): the digits family, sharpness and orbit curvature
from .tasks.digits import (DigitsBatch, MinibatchSampler, accuracy, cross_entropy, minibatch_indices, minibatch_sampler,
                           sample_digits, teleport_loss_change)
from .symmetry.generalization import GeometryTeleport, orbit_curvature, random_lie_elements, sharpness

__all__ = [
    # configs
    "ConfigError", "from_dict", "to_dict",
    # tasks
    "TaskConfig", "TaskBatch", "sample_tasks", "training_seeds", "validation_seeds", "unseen_seeds",
    "is_test_seed", "is_validation_seed", "TEST_SEED_OFFSET", "VALIDATION_SEED_OFFSET",
    "mlp_loss", "loss_and_grads", "forward", "layer_inputs", "sigma", "sigma_inv", "affine", "append_ones_row",
    "join_bias", "split_bias",
    # symmetry
    "group_action", "teleport", "input_qr", "apply_pinv", "loss_change", "teleport_gradient", "SymmetryWarning",
    # teleport strategies and hand-designed optimizers
    "TeleportStrategy", "RandomTeleport", "GradientAscentTeleport", "TeleportSchedule", "normalize_frobenius",
    "BaselineConfig", "BASELINES", "HandDesigned", "run_baseline",
    # meta-optimizers
    "LearnedConfig", "LearnedOptimizer", "VARIANTS", "ARCHS", "LSTMConfig", "TeleportConfig", "UpdateLSTM",
    "TeleportLSTM", "CoordinatewiseConfig", "CoordinatewiseAblation", "CoordinateUpdate", "EquivariantTeleport",
    "LearnedTeleportOptimizer",
    # meta-training
    "MetaTrainConfig", "load_config", "meta_train", "MetaTrainResult", "UnrollEngine", "DivergenceError",
    # evaluation
    "evaluate", "compare", "Curves", "BaselineMethod", "summarize", "paired_comparison", "grid_search",
    "hypergradient_tune", "tune_all",
    # checkpoints
    "load_optimizer", "load_checkpoint", "save_checkpoint", "CheckpointError",
    # generalization (digits)
    "sample_digits", "DigitsBatch", "cross_entropy", "accuracy", "MinibatchSampler", "minibatch_sampler",
    "minibatch_indices", "teleport_loss_change", "sharpness", "orbit_curvature", "random_lie_elements",
    "GeometryTeleport",
]
