"""Data-parallel meta-training on torch.distributed (gloo, CPU): disjoint seed shards, meta-gradients
equal to one process over the combined batch, identical meta-parameters on every rank.

The torchrun entry script, rank-0-only writing and resuming a two-rank run are exercised in
tests/test_faults.py (a rank dying)."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from metatele.configs import ConfigError
from metatele.meta.distributed import DataParallel, DistributedError, init_distributed
from metatele.meta.engine import UnrollEngine
from metatele.meta.config import MetaTrainConfig

from helpers import tiny as helpers_tiny

pytestmark = pytest.mark.usefixtures("one_thread")



def tiny(**kw) -> dict:
    return helpers_tiny(**{"trajectories": 40, **kw})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


# -- sharding (no process group needed) -------------------------------------------------------------
def test_ranks_train_on_disjoint_interleaved_seeds_covering_the_single_process_batch():
    cfg = MetaTrainConfig.from_dict(tiny())
    single = UnrollEngine(cfg)
    ranks = [UnrollEngine(cfg, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):  # a generation is 2 meta-steps: the batch is replaced once in between
        assert [e.trajectories.seeds.tolist() for e in ranks] == [sorted(single.trajectories.seeds.tolist())[r::2] for r in range(2)]
        for e in (single, *ranks):
            e.meta_step()
    assert single.trajectories.seeds.tolist() == [4, 5, 6, 7] and ranks[0].trajectories.seeds.tolist() == [4, 6]
    assert ranks[1].trained_seed_range == single.trained_seed_range == (0, 8)


def test_staggered_starts_are_spread_over_the_whole_batch_as_in_one_process():
    cfg = MetaTrainConfig.from_dict(tiny(stagger=True, steps=12, batch_size=8, trajectories=100))
    single = UnrollEngine(cfg)
    ranks = [UnrollEngine(cfg, rank=r, world_size=2) for r in range(2)]
    for r, e in enumerate(ranks):
        assert e.trajectories.steps_done.tolist() == single.trajectories.steps_done[r::2].tolist()
        assert e.trajectories.seeds.tolist() == single.trajectories.seeds[r::2].tolist()


def test_a_batch_that_does_not_split_over_the_ranks_is_rejected():
    with pytest.raises(ConfigError, match="batch_size: .* 4 trajectories .* 3 data-parallel ranks"):
        UnrollEngine(MetaTrainConfig.from_dict(tiny()), rank=0, world_size=3)


def test_launching_without_torchrun_says_how_to_launch(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(DistributedError, match="torchrun --nproc_per_node"):
        init_distributed(torch.device("cpu"), timeout_s=5)


@pytest.mark.parametrize("value", ["0", "-3", "inf", "soon"])
def test_a_timeout_that_is_not_a_positive_number_of_seconds_is_a_usage_error(value, capsys):
    from metatele.cli import build_distributed_parser
    with pytest.raises(SystemExit) as e:
        build_distributed_parser().parse_args(["--config", "quick", "--out", "x", "--timeout", value])
    assert e.value.code == 2 and "--timeout" in capsys.readouterr().err


# -- two gloo processes -----------------------------------------------------------------------------
STEPS = 6


def _worker(rank: int, port: int, cfg: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    init_distributed(torch.device("cpu"), timeout_s=30)
    engine = UnrollEngine(MetaTrainConfig.from_dict(cfg), rank=rank, world_size=2)
    comm = DataParallel("cpu", timeout_s=30)
    comm.attach(engine)
    comm.check_identical(engine.meta_parameters)
    grads, seeds = [], []
    reduce = engine.grad_reducer

    def record(params):
        reduce(params)
        grads.append(flat(p.grad for p in params))

    engine.grad_reducer = record
    for _ in range(STEPS):
        seeds.append(torch.as_tensor(engine.trajectories.seeds.copy()))
        engine.meta_step()
    params = flat(engine.meta_parameters).clone()
    with torch.no_grad():  # a rank whose meta-parameters drift is caught
        engine.meta_parameters[0].view(-1)[0] += 1e-9 * rank
    try:
        comm.check_identical(engine.meta_parameters)
        caught = "no"
    except DistributedError as e:
        caught = str(e)
    save_file({"grads": torch.stack(grads), "params": params, "seeds": torch.stack(seeds)},
              f"{out}/rank{rank}.safetensors", metadata={"caught": caught})
    torch.distributed.destroy_process_group()


def test_two_gloo_ranks_take_the_single_process_meta_step_over_the_combined_batch(tmp_path):
    cfg = tiny()
    mp.start_processes(_worker, args=(free_port(), cfg, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    single = UnrollEngine(MetaTrainConfig.from_dict(cfg))
    expected, seeds = [], []
    single.grad_reducer = lambda params: expected.append(flat(p.grad for p in params))
    for _ in range(STEPS):
        seeds.append(sorted(single.trajectories.seeds.tolist()))
        single.meta_step()
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    for step in range(STEPS):
        # each rank trained on its own seeds; together, on the single process's batch
        mine = [set(r["seeds"][step].tolist()) for r in ranks]
        assert not mine[0] & mine[1] and sorted(mine[0] | mine[1]) == seeds[step]
        for r in ranks:
            g = r["grads"][step]
            rel = ((g - expected[step]).norm() / expected[step].norm()).item()
            assert rel <= 1e-6, (step, rel)
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])  # identical on both ranks, bitwise
    rel = ((ranks[0]["params"] - flat(single.meta_parameters)).norm() / flat(single.meta_parameters).norm()).item()
    assert rel <= 1e-6
    for r in range(2):
        with safe_open(tmp_path / f"rank{r}.safetensors", "pt") as f:
            assert "meta-parameters differ between ranks" in f.metadata()["caught"]
