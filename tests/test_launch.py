"""launch/local_cluster.sh: a job joins a separately started Ray cluster through cluster.address."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_local_cluster_script_runs_a_job_on_a_started_ray_cluster(tmp_path):
    import ray

    if ray.is_initialized():  # an earlier test's in-process cluster would be joined instead
        ray.shutdown()
    out = tmp_path / "cluster-run"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "RAY_PORT": "6391", "RAY_NUM_CPUS": "3"}
    proc = subprocess.run(
        ["bash", str(ROOT / "launch" / "local_cluster.sh"), "--max_steps", "2", "--save_steps", "0",
         "--data.eval_limit", "20", "--output_dir", str(out), "--logging.progress", "false"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2
    # the script stopped its cluster: nothing is left listening where its head node was
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", 6391), timeout=5):
        pass
