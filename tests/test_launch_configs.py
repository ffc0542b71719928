"""The cluster launch files are valid: the autoscaler config against Ray's own schema, the KubeRay
RayJob's structure and entrypoint, and the Slurm script's syntax, directives and commands (dry run)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import yaml

from rlkit.cli import app

LAUNCH = Path(__file__).resolve().parents[1] / "launch"


def rlkit_arguments_parse(command: str) -> None:
    """An `rlkit train ...` command line: its subcommand exists and its config overrides load."""
    from rlkit.config import parse_override_args
    from rlkit.validation import load_config

    words = shlex.split(command)
    assert words[:2] == ["rlkit", "train"], words
    recipe, rest = None, []
    i = 2
    while i < len(words):
        if words[i] == "--recipe":
            recipe, i = words[i + 1], i + 2
        else:
            rest.append(words[i])
            i += 1
    overrides = parse_override_args(rest)
    overrides.pop("cluster.address")  # "auto": a cluster to join, not one to check here
    from rlkit.config import RLConfig, apply_mapping, apply_overrides, normalize_objective, read_yaml, recipe_path
    from rlkit import validation

    config = RLConfig()
    apply_mapping(config, normalize_objective(read_yaml(recipe_path(recipe))), recipe)
    apply_overrides(config, overrides)
    validation._check_choices_and_ranges(config)
    validation._check_plugins(config)


def test_the_autoscaler_config_passes_rays_schema():
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load((LAUNCH / "ray-cluster.yaml").read_text())
    validate_config(config)  # Ray's own check: jsonschema, then its node-type rules
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0}


def test_the_kuberay_rayjob_is_well_formed_and_its_entrypoint_loads():
    job = yaml.safe_load((LAUNCH / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    head = spec["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert head["template"]["spec"]["containers"][0]["image"]
    for group in spec["rayClusterSpec"]["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        container = group["template"]["spec"]["containers"][0]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        # time for rlkit's SIGTERM handling: finish the step, write the checkpoint
        assert group["template"]["spec"]["terminationGracePeriodSeconds"] >= 60
    rlkit_arguments_parse(spec["entrypoint"])


def test_the_slurm_script_parses_and_its_dry_run_starts_ray_then_rlkit(tmp_path):
    script = LAUNCH / "slurm.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", script.read_text(), re.M))
    assert directives["nodes"] == "2" and directives["signal"] == "B:TERM@300"
    env = {**os.environ, "RLKIT_DRY_RUN": "1", "SLURM_JOB_NODELIST": "gpu01,gpu02", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(["bash", str(script), "--recipe", "gsm8k-qwen2.5-7b", "--output_dir", "/scratch/run"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(l.startswith("srun --nodes=1 --ntasks=1 -w gpu01 ray start --head --node-ip-address=gpu01") for l in lines)
    assert any(l.startswith("srun --nodes=1 --ntasks=1 -w gpu02 ray start --address=gpu01:6379") for l in lines)
    train = next(l for l in lines if l.startswith("rlkit train"))
    assert train == "rlkit train --cluster.address gpu01:6379 --recipe gsm8k-qwen2.5-7b --output_dir /scratch/run"
    rlkit_arguments_parse(train.replace("gpu01:6379", "auto"))


def test_the_documented_job_commands_exist():
    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert {"submit", "status", "logs", "stop"} <= names
