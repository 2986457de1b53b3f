"""Full-size acceptance checks (marked slow: minutes each; `pytest -m slow` runs them).

The behaviours are covered cheaply in the default run by tests/test_engine.py (meta-training
lowers the meta-loss, meta-gradients, determinism) and tests/test_evaluate.py.
"""
import time
from pathlib import Path

import numpy as np
import pytest

from metatele import BaselineConfig, evaluate, load_config, meta_train, unseen_seeds

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_fast_update_tele_config_trains_in_minutes_and_beats_gd_at_step_30():
    config = load_config("fast_update_tele", ["device=cpu"])
    assert config.trajectories == 2000 and config.steps == 100 and config.learned.lstm.hidden == 300
    t0 = time.perf_counter()
    result = meta_train(config, progress=False)
    seconds = time.perf_counter() - t0
    assert seconds < 300, seconds
    seeds = unseen_seeds(100)
    learned = evaluate(result.optimizer, config.task, seeds, 30)
    gd = evaluate(BaselineConfig("gd", lr=3e-4), config.task, seeds, 30)
    assert np.mean(learned.log_loss[30]) < np.mean(gd.log_loss[30])
