"""The cluster path a user takes: a local multi-node Ray cluster (a head and two worker nodes, each its
own `ray start` on loopback), runs submitted through Ray's Jobs API, their logs followed, the run
folders checked, placement read from Ray's state API, a job stopped with `rlkit stop`, a worker node
killed mid-run, and the cluster stopped by its own process ids."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import socket
import sys
from pathlib import Path

import pytest

from rlkit import jobs
from rlkit.validation import load_config

ROOT = Path(__file__).resolve().parents[1]
# about 2 min: a real three-node cluster and three short runs. own_ray: no in-process session beside
# it (this process talks to the token-authenticated cluster, and Ray reads auth settings per process)
pytestmark = [pytest.mark.slow, pytest.mark.own_ray]


def launcher():
    spec = importlib.util.spec_from_file_location("local_multinode", ROOT / "launch" / "local_multinode.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _reload_ray_auth() -> None:
    """Ray reads the auth mode and token once per process; this process already ran clusters without."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray

    if ray.is_initialized():  # an earlier test's in-process cluster must not be what the jobs join
        ray.shutdown()
    state_dir = tmp_path_factory.mktemp("cluster")
    local = launcher()
    state = local.start(state_dir, workers=2, cpus=2) | {"state_dir": str(state_dir)}
    # the cluster's token, for the Jobs API and state API calls of this process
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=state["token"])
    _reload_ray_auth()
    try:
        yield state
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reload_ray_auth()
        local.stop(state_dir)
    host, port = state["address"].split(":")
    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=5):
        pass  # nothing is left where the head node was


def actors_once_training(cluster, job: str, metrics: Path, steps: int = 2) -> list:
    """The job's live actors, from Ray's state API, once its run has logged ``steps`` steps."""
    import time

    from ray.util.state import list_actors

    from rlkit.runs import read_metrics

    deadline = time.monotonic() + 300
    while not metrics.exists() or len(read_metrics(metrics)) < steps:
        assert time.monotonic() < deadline and jobs.status(cluster["dashboard"], job)["status"] in ("PENDING", "RUNNING")
        time.sleep(0.5)
    return list_actors(address=cluster["dashboard"], filters=[("state", "=", "ALIVE")], limit=1000)


def test_an_unknown_job_and_an_unreachable_cluster_are_named(cluster):
    from rlkit.config import ConfigError

    with pytest.raises(ConfigError, match="no job 'rlkit-nope'"):
        jobs.status(cluster["dashboard"], "rlkit-nope")
    with pytest.raises(ConfigError, match="cannot reach the Ray Jobs API at http://127.0.0.1:9"):
        jobs.client("http://127.0.0.1:9")


def test_a_run_the_cluster_cannot_hold_fails_at_once_naming_what_is_short(cluster, tmp_path):
    config = load_config(None, {"max_steps": "2", "rollout.num_workers": "6", "output_dir": str(tmp_path / "big")})
    job, _ = jobs.submit(config, cluster["dashboard"], python=sys.executable, staging_root=tmp_path)
    out = io.StringIO()
    jobs.logs(cluster["dashboard"], job, follow=True, out=out)
    assert jobs.status(cluster["dashboard"], job)["status"] == "FAILED"
    assert "cannot be placed on the cluster: it needs 7 CPUs, the cluster has 4" in out.getvalue()


def test_spread_places_ranks_and_workers_apart_and_rlkit_stop_checkpoints_the_job(cluster, tmp_path):
    """Two learner ranks and two rollout workers under cluster.placement spread: one of each per
    worker node, as Ray's state API reports it while the job runs. Then `rlkit stop`: the job
    finishes its step, checkpoints and says so, and the run resumes from the run folder."""
    from typer.testing import CliRunner

    from rlkit.cli import app
    from rlkit.runs import read_metrics

    config = load_config(None, {"max_steps": "400", "save_steps": "0", "data.eval_limit": "20",
                                "rollout.prompts_per_step": "8", "rollout.num_workers": "2",
                                "learner.num_learners": "2", "cluster.placement": "spread",
                                "output_dir": str(tmp_path / "spread"), "logging.tensorboard": "false"})
    job, run_dir = jobs.submit(config, cluster["dashboard"], python=sys.executable, staging_root=tmp_path)
    metrics = Path(run_dir) / "metrics.jsonl"
    alive = actors_once_training(cluster, job, metrics)
    for cls in ("Learner", "RolloutWorker"):
        where = sorted(a.node_id for a in alive if a.class_name == cls)
        assert len(where) == 2 and where[0] != where[1], (cls, where)  # one per worker node
    result = CliRunner().invoke(app, ["stop", job, "--address", cluster["dashboard"]])
    assert result.exit_code == 0, result.output
    assert jobs.status(cluster["dashboard"], job)["status"] == "STOPPED"
    stopped = json.loads((Path(run_dir) / "stopped.json").read_text())
    assert f"checkpoint at step {stopped['step']}" in result.output
    assert (Path(stopped["checkpoint"]) / "COMPLETE").is_file() and 2 <= stopped["step"] < 400
    # continued where it stopped (here, in-process: the run folder is all it needs)
    result = CliRunner().invoke(app, ["train", "--resume", run_dir, "--max_steps", str(stopped["step"] + 2),
                                      "--cluster.address", "null", "--logging.progress", "false"])
    assert result.exit_code == 0, result.output
    assert [m["step"] for m in read_metrics(metrics)] == list(range(1, stopped["step"] + 3))


def test_a_submitted_run_survives_a_lost_worker_node_and_trains_every_scheduled_group(cluster, tmp_path,
                                                                                       monkeypatch):
    """A run with a local reward plugin, submitted through the Jobs API, its logs followed to the end.
    Mid-run, the worker node that holds a rollout worker but not the learner is killed (SIGKILL, no
    drain). Ray reschedules the worker's bundle on the surviving node, the fleet sends its lost call
    again, and the run trains every group it scheduled; failures.jsonl says what happened.
    Last in this module: the cluster has one worker node less afterwards."""
    from ray.util.state import list_nodes

    from rlkit.runs import read_metrics

    plugin = tmp_path / "plugins" / "my_rewards.py"
    plugin.parent.mkdir()
    plugin.write_text("def right(prompts, completions, answer, **kwargs):\n"
                      "    return [float(c.strip() == a) for c, a in zip(completions, answer)]\n")
    monkeypatch.chdir(tmp_path)
    steps, prompts = 10, 8
    config = load_config(None, {"max_steps": str(steps), "save_steps": "4", "data.eval_limit": "20",
                                "rollout.prompts_per_step": str(prompts), "rollout.num_workers": "2",
                                "cluster.placement": "spread", "cluster.worker_cpus": "0.5",
                                "rewards.funcs": f"[{plugin}:right]", "output_dir": "runs/lost",
                                "logging.tensorboard": "false"})
    job, run_dir = jobs.submit(config, cluster["dashboard"], python=sys.executable, staging_root=tmp_path)
    assert run_dir == str(tmp_path / "runs" / "lost")  # made absolute: the driver runs elsewhere
    metrics = Path(run_dir) / "metrics.jsonl"
    alive = actors_once_training(cluster, job, metrics)
    learner_node = next(a.node_id for a in alive if a.class_name == "Learner")
    victims = {a.node_id for a in alive if a.class_name == "RolloutWorker"} - {learner_node}
    assert victims, "spread put no rollout worker apart from the learner"
    node_names = {n.node_id: next(r for r in n.resources_total if r.startswith("worker_node_"))
                  for n in list_nodes(address=cluster["dashboard"]) if any(r.startswith("worker_node_") for r in n.resources_total)}
    killed_at = len(read_metrics(metrics))
    launcher().stop(Path(cluster["state_dir"]), node=node_names[victims.pop()])
    out = io.StringIO()
    jobs.logs(cluster["dashboard"], job, follow=True, out=out)  # returns when the job ends
    state = jobs.status(cluster["dashboard"], job)
    assert state["status"] == "SUCCEEDED", out.getvalue()[-3000:]
    assert state["run_dir"] == run_dir and "run summary" in out.getvalue()
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    assert summary["steps"] == steps and (Path(run_dir) / "final" / "model.safetensors").is_file()
    sent = __import__("yaml").safe_load((Path(run_dir) / "config.yaml").read_text())
    assert sent["cluster"]["address"] == "auto" and sent["rewards"]["funcs"] == ["my_rewards.py:right"]
    rows = read_metrics(metrics)
    assert [m["step"] for m in rows] == list(range(1, steps + 1)) and killed_at < steps
    assert all(m["trained_groups"] == prompts for m in rows), [m["trained_groups"] for m in rows]
    assert 0.0 < rows[0]["reward_mean"] < 1.0  # the plugin really scored
    failures = [json.loads(line) for line in (Path(run_dir) / "failures.jsonl").read_text().splitlines()]
    retries = [f for f in failures if f.get("kind") == "actor_retry" and f["actor"].startswith("rollout worker")]
    assert retries and any(f["restarted"] for f in retries), failures
