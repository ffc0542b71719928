"""The rollout fleet: a restarting worker is waited for, not counted dead again; a dead one is
replaced; weights are confirmed before a lost call is sent again; a call that keeps killing its
worker stops with a clear error. Run against small real Ray actors (no model)."""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray

from rlkit.driver.recovery import RecoverySettings, RolloutFleet, WorkerLost


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    from rlkit.cluster import start_ray
    from rlkit.validation import load_config

    started = start_ray(load_config(None, {}))
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    if started:
        ray.shutdown()


@dataclass
class Group:
    prompt_index: int
    seed: int
    policy_version: int
    weights: str


class FakeWorker:
    """A rollout worker's call surface. ``starts`` counts constructions in a file; every start after
    the first sleeps ``restart_s`` (a restart reloading a model on a busy node)."""

    def __init__(self, starts: str, restart_s: float = 0.0):
        self._incarnation = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with open(starts, "a") as f:
            f.write("x")
        if Path(starts).stat().st_size > 1:
            time.sleep(restart_s)
        self.version, self.weights = 0, "initial"

    def incarnation(self) -> str:
        return self._incarnation

    def set_weights(self, weights, version: int) -> dict:
        self.weights, self.version = weights, version
        return {"incarnation": self._incarnation, "bytes": 0, "seconds": 0.0}

    def generate_groups(self, items, seed, kill_file: str | None = None, kills: int = 0) -> list[Group]:
        """Kills its own process (SIGKILL, as the OOM killer does) on the first ``kills`` calls."""
        if kill_file is not None:
            with open(kill_file, "a") as f:
                f.write("x")
            if Path(kill_file).stat().st_size <= kills:
                os.kill(os.getpid(), signal.SIGKILL)
        return [Group(i, seed, self.version, self.weights) for i, _ in items]


def fleet_of(tmp_path, restart_s=0.0, max_restarts=-1, **settings) -> tuple[RolloutFleet, list]:
    actor = ray.remote(num_cpus=0, max_restarts=max_restarts)(FakeWorker)
    starts = str(tmp_path / f"starts-{uuid.uuid4().hex[:6]}")
    workers = [actor.remote(starts, restart_s)]
    spawn = lambda _i: actor.remote(starts, 0.0)  # noqa: E731
    return RolloutFleet(workers, RecoverySettings(**settings), spawn=spawn), workers


ITEMS = [(0, {}), (1, {})]


def test_a_call_sent_while_the_worker_restarts_waits_for_it_and_counts_one_death(tmp_path):
    # the restart takes 4 s; Ray refuses calls at once while it lasts. One retry allowed: the wait
    # for the restart must not be counted as further deaths.
    fleet, _ = fleet_of(tmp_path, restart_s=4.0, max_call_retries=1, restart_timeout_s=120)
    fleet.results(fleet.load_weights(ray.put("w3"), 3))
    kill = str(tmp_path / "kills")
    dying = fleet.generate(0, ITEMS, 7, kill_file=kill, kills=1)
    queued = fleet.generate(0, ITEMS[:1], 8)  # lost with the process, sent again too
    groups = fleet.result(dying)
    assert [(g.prompt_index, g.seed, g.policy_version, g.weights) for g in groups] == [(0, 7, 3, "w3"), (1, 7, 3, "w3")]
    assert [(g.seed, g.weights) for g in fleet.result(queued)] == [(8, "w3")]
    assert dying.retries == 1 and queued.retries == 1
    records = fleet.take_retries()
    assert len(records) == 2 and fleet.take_retries() == []
    first = records[0]
    assert first["kind"] == "actor_retry" and first["actor"] == "rollout worker 0"
    assert first["call"] == "generate_groups" and first["restarted"] and not first["replaced"]
    assert first["retry"] == 1 and first["max_retries"] == 1
    assert first["error"] in ("ActorUnavailableError", "ActorDiedError")
    assert first["waited_s"] > 0  # it waited for the restart instead of sending the call into it


def test_a_restart_nobody_saw_is_caught_by_the_weights_version(tmp_path):
    fleet, workers = fleet_of(tmp_path)
    fleet.results(fleet.load_weights(ray.put("w2"), 2))
    before = ray.get(workers[0].incarnation.remote())
    ray.kill(workers[0], no_restart=False)  # dies while idle; Ray restarts it with initial weights
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the fresh process answers
        try:
            if ray.get(workers[0].incarnation.remote(), timeout=10) != before:
                break
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
            time.sleep(0.2)
    groups = fleet.result(fleet.generate(0, ITEMS, 1))
    assert {(g.policy_version, g.weights) for g in groups} == {(2, "w2")}  # not the initial policy's
    (record,) = fleet.take_retries()
    assert record["error"] == "stale weights" and record["restarted"]


def test_a_call_that_keeps_killing_its_worker_gives_up_naming_the_worker_and_the_call(tmp_path):
    fleet, _ = fleet_of(tmp_path, max_call_retries=2)
    call = fleet.generate(0, ITEMS, 1, kill_file=str(tmp_path / "kills"), kills=100, what="2 prompts of step 4")
    with pytest.raises(WorkerLost, match=r"rollout worker 0 died 3 times during the same generate_groups "
                                         r"\(2 prompts of step 4\); giving up \(cluster.max_call_retries=2\)"):
        fleet.result(call)
    records = fleet.take_retries()
    assert [r["retry"] for r in records] == [1, 2, 3] and records[-1]["gave_up"]


def test_a_worker_gone_for_good_is_replaced_and_given_the_weights(tmp_path):
    fleet, workers = fleet_of(tmp_path)
    fleet.results(fleet.load_weights(ray.put("w5"), 5))
    old = workers[0]
    ray.kill(old, no_restart=True)
    groups = fleet.result(fleet.generate(0, ITEMS, 1))
    assert {(g.policy_version, g.weights) for g in groups} == {(5, "w5")}
    assert workers[0] is not old  # swapped into the caller's list, so its owner shuts it down
    (record,) = fleet.take_retries()
    assert record["error"] == "ActorDiedError" and record["replaced"] and record["retry"] == 1


def test_a_worker_that_does_not_come_back_in_time_stops_the_run_with_the_setting_named(tmp_path):
    fleet, workers = fleet_of(tmp_path, restart_s=60.0, restart_timeout_s=3.0)
    call = fleet.generate(0, ITEMS, 1, kill_file=str(tmp_path / "kills"), kills=1)
    with pytest.raises(WorkerLost, match=r"rollout worker 0 did not come back within 3 s "
                                         r"\(cluster.actor_restart_timeout_s\)"):
        fleet.result(call)
    ray.kill(workers[0], no_restart=True)


class FakeLearner:
    def export_weights(self):
        os.kill(os.getpid(), signal.SIGKILL)


def test_weights_lost_with_their_learner_are_not_blamed_on_the_worker(tmp_path):
    fleet, _ = fleet_of(tmp_path)
    learner = ray.remote(num_cpus=0, max_restarts=0)(FakeLearner).remote()
    loads = fleet.load_weights(learner.export_weights.remote(), 1)
    with pytest.raises(ray.exceptions.RayActorError) as raised:
        fleet.results(loads)
    assert raised.value.actor_id == learner._actor_id.hex()
    assert fleet.take_retries() == []  # the worker was never waited for, reloaded or charged


def test_actors_run_at_the_drivers_priority_not_rays_background_one():
    """Ray's default niceness (15) lets any ordinary process on the machine starve the actors; a
    restart then outlasts its bound. rlkit's in-process cluster starts them at the driver's."""

    @ray.remote(num_cpus=0)
    def niceness() -> int:
        return os.nice(0)

    if os.environ.get("RAY_worker_niceness", "0") != "0":
        pytest.skip("the environment sets RAY_worker_niceness itself")
    assert ray.get(niceness.remote()) == os.nice(0)
