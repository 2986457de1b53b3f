"""CUDA checks (marked ``cuda``; skipped without a CUDA device). ``benchmarks/gpu_check.sh`` runs
them with ``pytest -m cuda``.

The inner step must be correct on a GPU by construction: the same meta-step as on the CPU (to the
rounding of different kernels), no host synchronisation inside the inner step, and a checkpoint
written from CUDA tensors that loads on a machine without one.
"""
from __future__ import annotations

import pytest
import torch

from helpers import tiny

from metatele.meta.config import MetaTrainConfig
from metatele.meta.engine import UnrollEngine
from metatele.release.checkpoint import load_optimizer, save_checkpoint

DEVICE = "cuda"
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SETTINGS = {
    "paper": {},
    "coordinatewise": {"learned.arch": "coordinatewise", "second_order": True,
                       "learned.coordinatewise.update_safeguard": True, "learned.coordinatewise.update_backoff": 0.5},
}


def config(arch: str, device: str) -> MetaTrainConfig:
    return MetaTrainConfig.from_dict(tiny(device=device, **SETTINGS[arch]))


@pytest.mark.parametrize("arch", list(SETTINGS))
def test_a_cuda_meta_step_equals_the_cpu_one(arch):
    on_cpu, on_device = UnrollEngine(config(arch, "cpu")), UnrollEngine(config(arch, DEVICE))
    for _ in range(2):
        expected, got = on_cpu.meta_step(), on_device.meta_step()
    assert got["meta_loss"] == pytest.approx(expected["meta_loss"], rel=1e-9)
    cpu, device = on_cpu.optimizer.state_dict(), on_device.optimizer.state_dict()
    for k in cpu:
        torch.testing.assert_close(device[k].cpu(), cpu[k], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("arch", list(SETTINGS))
def test_the_inner_step_does_not_synchronise_with_the_host(arch):
    engine = UnrollEngine(config(arch, DEVICE))
    engine.meta_step()
    tr = engine.trajectories
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            engine.optimizer.step(tr.W, tr.X, tr.Y, tr.state, x_qr=tr.X_qr)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("arch", list(SETTINGS))
def test_a_checkpoint_trained_on_cuda_loads_on_the_cpu(arch, tmp_path):
    cfg = config(arch, DEVICE)
    engine = UnrollEngine(cfg)
    engine.meta_step()
    path = save_checkpoint(tmp_path / "opt.safetensors", engine.optimizer, cfg)
    loaded = load_optimizer(path, device="cpu")
    for k, v in engine.optimizer.state_dict().items():
        w = loaded.state_dict()[k]
        assert w.device.type == "cpu" and torch.equal(w, v.cpu()), k
