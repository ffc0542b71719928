"""Runs that survive what shared machines do to them: a rollout worker killed mid-run while the
machine is busy, a stale op-build lock left by a killed run, actors that never finish starting."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray

from rlkit import RLConfig
from rlkit.objectives import GRPO
from rlkit.runs import read_metrics
from rlkit.trainer import RLTrainer


@pytest.fixture
def busy_machine():
    """CPU-burning processes on half the cores (one on a 2-core machine, where the suite once failed
    this way), for the length of the test; stopped by their own process ids. They run at normal
    priority, as rlkit's actors do (Ray's default would start those at niceness 15)."""
    count = max(1, (os.cpu_count() or 2) // 2)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield [p.pid for p in burners]
    finally:
        for burner in burners:
            os.kill(burner.pid, signal.SIGKILL)
            burner.wait()


def small_config(out: Path, **extra) -> RLConfig:
    return RLConfig(max_steps=2, save_steps=0, output_dir=str(out), progress=False, plot=False, tensorboard=False,
                    prompts_per_step=16, rewards={"num_workers": 0}, **extra)


@pytest.mark.slow
@pytest.mark.timeout(1500)  # four short runs on a deliberately busy machine
def test_a_worker_killed_mid_run_on_a_busy_machine_is_waited_for_every_time(tmp_path, busy_machine):
    from rlkit.envs.arith import ArithEnv

    env = ArithEnv()
    with ray_session():  # one Ray session for the four runs (each run's actors are its own)
        steady, calls = _train_killed_at(tmp_path, env, kill_at=0)
        # the reward runs inside the rollout worker (rewards.num_workers 0): call 1 is the evaluation
        # before training, the last the evaluation after it, the others score the groups that end
        # together in the steps' streams. Each repetition kills the worker's process (SIGKILL, as the
        # OOM killer does) in another of them: the evaluation before training, a step's stream, the
        # evaluation after it; a restart on this busy machine takes seconds.
        assert calls >= 5  # two evaluations and at least two batches of groups per step
        for kill_at in (1, 3, calls):
            metrics, _ = _train_killed_at(tmp_path, env, kill_at)
            # nothing lost, nothing trained twice: the same samples and the same updates as without a death
            for before, after in zip(steady, metrics):
                for key in ("reward_mean", "loss", "entropy", "trained_groups"):
                    # 1e-5: groups that arrive in another order after a restart sum in another order
                    assert after[key] == pytest.approx(before[key], abs=1e-5), (kill_at, key)


def _train_killed_at(tmp_path: Path, env, kill_at: int) -> tuple[list[dict], int]:
    calls = tmp_path / f"calls-{kill_at}"

    def exact_but_killed_once(prompts, completions, answer, calls=str(calls), kill_at=kill_at, **kwargs):
        with open(calls, "a") as f:
            f.write("x")
        if os.path.getsize(calls) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return [float(c.strip() == a) for c, a in zip(completions, answer)]

    out = tmp_path / f"run-{kill_at}"
    summary = RLTrainer(reward_funcs=[exact_but_killed_once], args=small_config(out),
                        train_dataset=env.dataset("train")[:200], eval_dataset=env.dataset("eval")[:8]).train()
    metrics = read_metrics(out / "metrics.jsonl")
    assert summary["steps"] == 2 and [m["trained_groups"] for m in metrics] == [16, 16], kill_at
    failures = out / "failures.jsonl"
    retries = [json.loads(line) for line in failures.read_text().splitlines()] if failures.exists() else []
    assert len(retries) == (1 if kill_at else 0), (kill_at, retries)  # one call was lost: the one running
    for retry in retries:
        assert retry["kind"] == "actor_retry" and retry["actor"] == "rollout worker 0" and retry["restarted"]
        assert retry["retry"] == 1 and retry["waited_s"] >= 0
    return metrics, os.path.getsize(calls)


@contextlib.contextmanager
def ray_session():
    from rlkit.cluster import start_ray
    from rlkit.validation import load_config

    started = start_ray(load_config(None, {}))
    try:
        yield
    finally:
        if started:
            ray.shutdown()


class LearnerKillingGRPO(GRPO):
    """GRPO whose learner process kills itself (SIGKILL) in its third micro-batch: step 2's first."""

    def loss_sum(self, batch):
        calls = os.environ["RLKIT_TEST_LOSS_CALLS"]
        with open(calls, "a") as f:
            f.write("x")
        if os.path.getsize(calls) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().loss_sum(batch)


@pytest.mark.slow
@pytest.mark.own_ray  # its actors must start with the variable set here
def test_a_learner_killed_mid_run_stops_it_with_the_command_that_resumes_it(tmp_path, monkeypatch):
    from rlkit.envs.arith import ArithEnv

    assert not ray.is_initialized()  # the learner must start with the variable set here
    monkeypatch.setenv("RLKIT_TEST_LOSS_CALLS", str(tmp_path / "loss_calls"))
    env = ArithEnv()
    out = tmp_path / "run"
    config = small_config(out)
    config.learner.micro_batch_size = 64  # two micro-batches a step (the token budget alone makes one)
    config.save_steps = 1
    config.objective.name = f"{__file__}:LearnerKillingGRPO"
    trainer = RLTrainer(args=config, train_dataset=env.dataset("train")[:200], eval_dataset=env.dataset("eval")[:8])
    with pytest.raises(RuntimeError, match=r"learner rank 0 died during step 2 \(ActorDiedError: .*\); a learner's "
                                           r"calls cannot run twice .*resume it from its last checkpoint \(step 1\): "
                                           rf"rlkit train --resume {out}$"):
        trainer.train()
    (record,) = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert record["kind"] == "actor_died" and record["actor"] == "learner rank 0" and record["step"] == 2
    # and the command it names does resume it: step 2 is trained again, the death stays on record
    summary = RLTrainer.from_run(out, {"logging.progress": "false"}).train(resume=True)
    assert summary["steps"] == 2 and [m["step"] for m in read_metrics(out / "metrics.jsonl")] == [1, 2]
    assert json.loads((out / "failures.jsonl").read_text().splitlines()[0])["kind"] == "actor_died"


@pytest.mark.own_ray  # its actors must start with the environment set here
def test_a_stale_lock_where_the_shm_op_would_be_built_cannot_stop_a_run(tmp_path, monkeypatch):
    # a build of DeepSpeed's CPU shared-memory op killed midway left its lock behind. A run needs no
    # such op: it starts, trains and finishes. (Before, every later learner waited on it forever.)
    assert not ray.is_initialized()  # the actors must start with the environment set here
    extensions = tmp_path / "torch_extensions"
    lock = extensions / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(extensions))
    config = small_config(tmp_path / "run", cluster={"op_lock_timeout_s": 5.0})
    config.max_steps = 1
    summary = RLTrainer(args=config, eval_dataset=[{"prompt": "2+3=", "answer": "5"}]).train()
    assert summary["steps"] == 1
    assert sorted(p.relative_to(extensions).as_posix() for p in extensions.rglob("*")) == [
        "deepspeed_shm_comm", "deepspeed_shm_comm/lock"]  # nothing was built


def test_an_op_build_behind_a_stale_lock_stops_after_the_bound_naming_the_lock(tmp_path, monkeypatch):
    from deepspeed.ops.op_builder.cpu.comm import ShareMemCommBuilder

    from rlkit.learner.op_builds import OpBuildLockTimeout, bounded_build_locks

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    builder = ShareMemCommBuilder()
    lock = tmp_path / builder.name / "lock"
    lock.parent.mkdir()
    lock.touch()
    outcome: dict = {}

    def build():
        try:
            with bounded_build_locks(1.0):
                builder.jit_load(verbose=False)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=build, daemon=True)
    thread.start()
    thread.join(timeout=300)  # unbounded, torch would wait on the lock for ever
    assert not thread.is_alive(), "the build still waits on the stale lock"
    error = outcome.get("error")
    assert isinstance(error, OpBuildLockTimeout), error
    assert str(lock) in str(error) and "cluster.op_lock_timeout_s" in str(error)
    assert sorted(p.name for p in lock.parent.iterdir()) == ["lock"]  # it compiled nothing
    from torch.utils.file_baton import FileBaton

    assert FileBaton.wait.__module__ == "torch.utils.file_baton"  # torch's own wait is back afterwards


def test_ops_are_built_inside_the_environment_and_the_shm_op_never(monkeypatch):
    import deepspeed.ops

    from rlkit.learner.op_builds import extensions_dir, prepare_op_builds

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    folder = prepare_op_builds()
    assert folder == extensions_dir() and Path(os.environ["TORCH_EXTENSIONS_DIR"]) == folder
    assert Path(sys.prefix) in folder.parents or str(Path.home() / ".cache" / "rlkit") in str(folder)
    assert deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] is False
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/somewhere/of/mine")
    assert prepare_op_builds() == Path("/somewhere/of/mine")  # the user's setting wins


class Sleeper:
    def start(self):
        time.sleep(600)


def test_actors_that_do_not_finish_starting_are_named_after_the_bound():
    from rlkit.cluster import StartTimeout, start_ray, wait_for_start
    from rlkit.validation import load_config

    started = start_ray(load_config(None, {}))
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    sleeper = ray.remote(num_cpus=0)(Sleeper).remote()
    try:
        quick = ray.put("ready")
        with pytest.raises(StartTimeout, match=r"^learner rank 1 did not finish starting within 2 s "
                                               r"\(cluster.start_timeout_s\)"):
            wait_for_start({"learner rank 0": quick, "learner rank 1": sleeper.start.remote()}, 2.0)
    finally:
        ray.kill(sleeper)
        if started:
            ray.shutdown()
