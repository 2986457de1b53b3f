"""metatele: learning to teleport.

LSTM meta-optimizers that take local steps (m1, :class:`UpdateLSTM`) and move a network's
weights along its symmetry orbits (m2, :class:`TeleportLSTM`), trained by truncated unrolled
differentiation through many batched gradient-descent trajectories on LeakyReLU networks.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .baselines import BASELINES, BaselineConfig, HandDesigned, run_baseline
from .configs import ConfigError, from_dict, to_dict
from .lstm import LSTMConfig, TeleportConfig, TeleportLSTM, UpdateLSTM
from .mlp import affine, augment, forward, join_bias, layer_inputs, loss_and_grads, mlp_loss, sigma, sigma_inv, split_bias
from .strategies import (
    GradientAscentTeleport,
    RandomTeleport,
    TeleportSchedule,
    TeleportStrategy,
    normalize_frobenius,
)
from .symmetry import SymmetryWarning, apply_pinv, group_action, input_qr, loss_change, teleport
from .teleport_grad import teleport_gradient
from .coordinatewise import CoordinatewiseConfig, CoordinateUpdate, EquivariantTeleport
from .tasks import (
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

from .learned import ARCHS, VARIANTS, LearnedConfig, LearnedOptimizer
from .train_config import MetaTrainConfig, load_config
from .engine import DivergenceError, UnrollEngine
from .train import MetaTrainResult, meta_train
from .checkpoint import CheckpointError, load_checkpoint, load_optimizer, save_checkpoint
from .dropin import LearnedTeleportOptimizer
from .evaluate import BaselineMethod, Curves, compare, evaluate
from .stats import paired_comparison, summarize
from .tuning import grid_search, hypergradient_tune, tune_all

__all__ = [name for name in dir() if not name.startswith("_")]
