"""Training as a Ray job: ``rlkit submit``, ``status``, ``logs`` and ``stop``, through Ray's Job
Submission API (the dashboard's HTTP address, ``http://HEAD:8265``).

What a submission sends (``runtime_env.working_dir``, a folder staged here):

* ``config.yaml``: the whole configuration, merged and checked here first (defaults, recipe, file,
  overrides), so a bad key fails on your machine, not minutes later on the cluster. Its
  ``cluster.address`` is ``auto``: the job's driver joins the cluster it runs on.
* every plugin given as a local file (``rewards.funcs: [my_rewards.py:score]``, an environment,
  objective, engine or preference loss), copied beside it and referred to by its file name.

What it does not send: data files and model folders are referred to by absolute path, and the run
folder (``output_dir``, made absolute) is written by the job's driver on the head node. On one
machine that is all the same disk; on a real cluster put them on storage every node mounts, or
use hub ids. The cluster's Python environment must have rlkit (``--pip`` installs packages into
the job's environment instead).

``rlkit stop JOB`` asks Ray to stop the job: the driver receives SIGTERM, finishes its step, writes
a checkpoint and ``stopped.json`` (:mod:`rlkit.driver.stopping`), and ``rlkit train --resume RUN``
continues it. Ray waits ``--stop-timeout`` seconds (its ``RAY_JOB_STOP_WAIT_TIME_S``, set for the
job) before it kills the driver.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from rlkit.config import ConfigError, RLConfig

STOP_TIMEOUT_S = 300
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # noqa: BLE001 (connection errors come in several types)
        raise ConfigError(f"cannot reach the Ray Jobs API at {address} ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); give the dashboard's address, "
                          "e.g. --address http://HEAD:8265") from None


def stage(config: RLConfig, folder: Path) -> dict[str, Any]:
    """Write the job's working directory: config.yaml and the local plugin files; the config as sent."""
    config.cluster.address = "auto"
    if config.output_dir is None:
        from rlkit.trainer import _default_run_dir

        config.output_dir = _default_run_dir(config)
    config.output_dir = str(Path(config.output_dir).expanduser().resolve())
    for key in ("train_file", "eval_file"):
        value = getattr(config.data, key)
        if value and Path(value).expanduser().exists():
            setattr(config.data, key, str(Path(value).expanduser().resolve()))
    if Path(config.model.name_or_path).expanduser().exists():
        config.model.name_or_path = str(Path(config.model.name_or_path).expanduser().resolve())
    copied: dict[str, Path] = {}

    def local(reference: str) -> str:
        path, sep, attr = reference.rpartition(":")
        if not sep or not path.endswith(".py"):
            return reference  # a registered name or module:attr
        source = Path(path).expanduser().resolve()
        if not source.is_file():
            raise ConfigError(f"plugin file not found: {path}")
        if source.name in copied and copied[source.name] != source:
            raise ConfigError(f"two plugin files are both named {source.name} ({copied[source.name]}, {source}); "
                              "rename one")
        copied[source.name] = source
        shutil.copy2(source, folder / source.name)
        return f"{source.name}:{attr}"

    config.rewards.funcs = [local(r) for r in config.rewards.funcs]
    config.rewards.eval_funcs = [local(r) for r in config.rewards.eval_funcs]
    config.env.name = local(config.env.name)
    config.objective.name = local(config.objective.name)
    config.rollout.engine = local(config.rollout.engine)
    config.preference.loss = local(config.preference.loss)
    data = config.to_dict()
    (folder / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return data


def submit(config: RLConfig, address: str, *, python: str = "python", pip: list[str] | None = None,
           stop_timeout_s: float = STOP_TIMEOUT_S, staging_root: Path | None = None) -> tuple[str, str]:
    """Submit training with ``config``; (job id, run folder)."""
    import tempfile

    jobs = client(address)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    job_id = f"rlkit-{stamp}-{secrets.token_hex(3)}"
    folder = Path(tempfile.mkdtemp(prefix=f"{job_id}-", dir=staging_root))
    sent = stage(config, folder)
    runtime_env: dict[str, Any] = {"working_dir": str(folder),
                                   "env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": str(int(stop_timeout_s))}}
    if pip:
        runtime_env["pip"] = list(pip)
    jobs.submit_job(entrypoint=f"{python} -m rlkit.cli train config.yaml --logging.progress false",
                    submission_id=job_id, runtime_env=runtime_env,
                    metadata={"run_dir": sent["output_dir"], "rlkit": "train"})
    return job_id, sent["output_dir"]


def status(address: str, job_id: str) -> dict[str, Any]:
    info = _info(client(address), job_id)
    return {"job": job_id, "status": str(info.status.value if hasattr(info.status, "value") else info.status),
            "message": info.message or "", "run_dir": (info.metadata or {}).get("run_dir", ""),
            "entrypoint": info.entrypoint}


def logs(address: str, job_id: str, follow: bool, out) -> None:
    jobs = client(address)
    _info(jobs, job_id)
    if not follow:
        out.write(jobs.get_job_logs(job_id))
        return

    async def tail() -> None:
        async for lines in jobs.tail_job_logs(job_id):
            out.write(lines)
            out.flush()

    asyncio.run(tail())


def stop(address: str, job_id: str, wait_s: float = STOP_TIMEOUT_S) -> dict[str, Any]:
    """Ask the job to stop (SIGTERM to its driver) and wait until it has."""
    jobs = client(address)
    _info(jobs, job_id)
    jobs.stop_job(job_id)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        state = status(address, job_id)
        if state["status"] in TERMINAL:
            return state
        time.sleep(1)
    return status(address, job_id)


def _info(jobs, job_id: str):
    try:
        return jobs.get_job_info(job_id)
    except Exception as exc:  # noqa: BLE001 (the API raises RuntimeError for an unknown job)
        raise ConfigError(f"no job {job_id!r} on this cluster ({str(exc).splitlines()[0] if str(exc) else ''})") \
            from None
