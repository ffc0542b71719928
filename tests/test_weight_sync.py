"""Weights reach the rollout workers over a broadcast group (gloo on CPU, the same code as NCCL on
GPUs) exactly as through the object store; a worker replaced mid-run rejoins a group formed again."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
from pathlib import Path

import pytest
import torch

from rlkit import RLConfig
from rlkit.cluster import weight_sync_mode
from rlkit.config import ConfigError
from rlkit.runs import read_metrics
from rlkit.trainer import RLTrainer
from rlkit.validation import load_config
from rlkit.weight_broadcast import TensorSpec, WeightGroup, tensor_specs

STATE = {"embed.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7,
         "norm.weight": torch.tensor([1.5, -2.25], dtype=torch.bfloat16),
         "step": torch.tensor([41], dtype=torch.int64)}


def _member(rank: int, world: int, port: int, out) -> None:
    group = WeightGroup("127.0.0.1", port, rank, world, torch.device("cpu"), timeout_s=60)
    if rank == 0:
        out.put((rank, group.send(STATE)))
    else:
        got = group.receive(tensor_specs(STATE))
        out.put((rank, {k: (v.dtype, v.tolist()) for k, v in got.items()}))


def test_rank_0_broadcasts_every_tensor_to_every_member_with_its_dtype_and_shape():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    members = [context.Process(target=_member, args=(rank, 3, port, out)) for rank in range(3)]
    for member in members:
        member.start()
    results = dict(out.get(timeout=120) for _ in members)
    for member in members:
        member.join(timeout=60)
    assert results[0] == 12 * 4 + 2 * 2 + 8  # bytes sent
    expected = {k: (v.dtype, v.tolist()) for k, v in STATE.items()}
    assert results[1] == results[2] == expected
    assert tensor_specs(STATE)[1] == TensorSpec("norm.weight", (2,), "bfloat16")


def test_auto_broadcasts_only_with_a_gpu_each_and_on_policy():
    config = load_config(None, {})
    assert weight_sync_mode(config, 1.0, 1.0) == "broadcast"
    assert weight_sync_mode(config, 0.5, 0.5) == "object_store"  # one GPU shared: NCCL cannot pair them
    assert weight_sync_mode(config, 0.0, 0.0) == "object_store"  # CPU
    stale = load_config(None, {"rollout.max_staleness": "1", "rollout.schedule": "periodic_async"})
    assert weight_sync_mode(stale, 1.0, 1.0) == "object_store"
    assert weight_sync_mode(load_config(None, {"cluster.weight_sync": "broadcast"}), 0.0, 0.0) == "broadcast"
    with pytest.raises(ConfigError, match=r"cluster.weight_sync: broadcast needs a GPU of its own .*learner 0.5"):
        weight_sync_mode(load_config(None, {"cluster.weight_sync": "broadcast"}), 0.5, 0.49)  # one GPU shared


def assert_same_step(before: dict, after: dict) -> None:
    for key in ("reward_mean", "trained_groups"):  # the same samples
        assert after[key] == pytest.approx(before[key], abs=1e-9), key
    for key in ("loss", "entropy"):
        assert after[key] == pytest.approx(before[key], abs=1e-5), key
    assert after["grad_norm"] == pytest.approx(before["grad_norm"], rel=1e-4)


def small_config(out: Path, **extra) -> RLConfig:
    return RLConfig(max_steps=3, save_steps=0, output_dir=str(out), progress=False, plot=False, tensorboard=False,
                    prompts_per_step=16, eval_limit=8, **extra)


@pytest.mark.slow
def test_broadcast_gives_the_workers_the_same_weights_as_the_object_store(tmp_path):
    runs = {}
    for mode in ("object_store", "broadcast"):
        config = small_config(tmp_path / mode, rollout={"num_workers": 2}, cluster={"weight_sync": mode})
        RLTrainer(args=config).train()
        runs[mode] = read_metrics(tmp_path / mode / "metrics.jsonl")
    # the same weights in the workers: the same samples, hence the same rewards and updates (up to
    # float summation order: two workers' groups reach the learner in the order they end)
    for plain, broadcast in zip(runs["object_store"], runs["broadcast"]):
        assert_same_step(plain, broadcast)
        assert broadcast["weight_sync_bytes"] == plain["weight_sync_bytes"]
        assert broadcast["weight_groups_formed"] == 1  # formed once, before the first sync
        assert "weight_groups_formed" not in plain


@pytest.mark.slow
def test_a_worker_replaced_mid_run_rejoins_a_group_formed_again(tmp_path):
    from rlkit.envs.arith import ArithEnv

    env = ArithEnv()

    def run(name: str, kill_at: int) -> list[dict]:
        calls = tmp_path / f"calls-{name}"

        def exact_but_killed_once(prompts, completions, answer, calls=str(calls), kill_at=kill_at, **kwargs):
            with open(calls, "a") as f:
                f.write("x")
            if os.path.getsize(calls) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # the reward runs in the worker: the worker dies
            return [float(c.strip() == a) for c, a in zip(completions, answer)]

        config = small_config(tmp_path / name, rewards={"num_workers": 0}, cluster={"weight_sync": "broadcast"})
        RLTrainer(reward_funcs=[exact_but_killed_once], args=config, train_dataset=env.dataset("train")[:200],
                  eval_dataset=env.dataset("eval")[:8]).train()
        return read_metrics(tmp_path / name / "metrics.jsonl")

    steady = run("steady", kill_at=0)
    # call 1 is the evaluation before training; call 4 scores groups of step 2 (several calls a step)
    killed = run("killed", kill_at=4)
    for before, after in zip(steady, killed):
        assert_same_step(before, after)
    assert [m["weight_groups_formed"] for m in steady] == [1, 1, 1]
    # the replacement got the weights from a CPU export, then the group was formed again with it
    assert killed[-1]["weight_groups_formed"] == 2


DYING_ENGINE = '''
import os, signal
from pathlib import Path
from rlkit.rollout.engines.hf import HFEngine

class DyingEngine(HFEngine):
    """Dies once, while loading weights v2: inside the broadcast's receive."""
    def load_weights(self, state_dict, version):
        marker = Path({marker!r})
        if version == 2 and not marker.exists():
            marker.write_text("died")
            os.kill(os.getpid(), signal.SIGKILL)
        super().load_weights(state_dict, version)
'''


@pytest.mark.slow
def test_a_worker_dying_inside_a_broadcast_gets_the_weights_through_the_object_store(tmp_path):
    engine = tmp_path / "dying_engine.py"
    engine.write_text(DYING_ENGINE.format(marker=str(tmp_path / "died")))
    runs = {}
    for name, extra in (("steady", {}), ("dying", {"engine": f"{engine}:DyingEngine"})):
        config = small_config(tmp_path / name, rollout={"num_workers": 2, **extra}, cluster={"weight_sync": "broadcast"})
        RLTrainer(args=config).train()
        runs[name] = read_metrics(tmp_path / name / "metrics.jsonl")
    assert (tmp_path / "died").exists()  # one worker died receiving v2, at the end of step 2
    for before, after in zip(runs["steady"], runs["dying"]):
        assert_same_step(before, after)
    # its replacement was given v2 through the object store, then the group was formed again
    assert [m["weight_groups_formed"] for m in runs["dying"]] == [1, 1, 2]
