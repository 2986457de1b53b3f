"""metatele: learning to teleport.

LSTM meta-optimizers that take local steps (m1, :class:`UpdateLSTM`) and move a network's
weights along its symmetry orbits (m2, :class:`TeleportLSTM`), trained by truncated unrolled
differentiation through many batched gradient-descent trajectories on LeakyReLU networks.
"""
from __future__ import annotations

from ._version import __version__

from .optimizers.baselines import BASELINES, BaselineConfig, HandDesigned, run_baseline
from .configs import ConfigError, from_dict, to_dict
from .optimizers.lstm import LSTMConfig, TeleportConfig, TeleportLSTM, UpdateLSTM
from .tasks.mlp import affine, augment, forward, join_bias, layer_inputs, loss_and_grads, mlp_loss, sigma, sigma_inv, split_bias
from .symmetry.strategies import (
    GradientAscentTeleport,
    RandomTeleport,
    TeleportSchedule,
    TeleportStrategy,
    normalize_frobenius,
)
from .symmetry.action import SymmetryWarning, apply_pinv, group_action, input_qr, loss_change, teleport
from .symmetry.teleport_grad import teleport_gradient
from .tasks.digits import DigitsBatch, accuracy, cross_entropy, sample_digits, teleport_loss_change
from .tasks.digits import MinibatchSampler, minibatch_indices, minibatch_sampler
from .symmetry.generalization import GeometryTeleport, orbit_curvature, random_lie_elements, sharpness
from .optimizers.coordinatewise import CoordinatewiseConfig, CoordinateUpdate, EquivariantTeleport
from .tasks.family import (
    TEST_SEED_OFFSET,
    VALIDATION_SEED_OFFSET,
    TaskBatch,
    TaskConfig,
    is_test_seed,
    is_validation_seed,
    sample_tasks,
    training_seeds,
    unseen_seeds,
    validation_seeds,
)

from .optimizers.learned import ARCHS, VARIANTS, LearnedConfig, LearnedOptimizer
from .meta.config import MetaTrainConfig, load_config
from .meta.engine import DivergenceError, UnrollEngine
from .meta.train import MetaTrainResult, meta_train
from .release.checkpoint import CheckpointError, load_checkpoint, load_optimizer, save_checkpoint
from .optimizers.dropin import LearnedTeleportOptimizer
from .evaluation.evaluate import BaselineMethod, Curves, compare, evaluate
from .evaluation.stats import paired_comparison, summarize
from .evaluation.tuning import grid_search, hypergradient_tune, tune_all

__all__ = [name for name in dir() if not name.startswith("_")]
