"""A Ray cluster of a head and N worker nodes on this machine (loopback), for trying the cluster path.

    python launch/local_multinode.py start --workers 2 --state /tmp/rlkit-cluster   # prints the addresses
    rlkit submit --address http://127.0.0.1:8266 --recipe grpo-arith --max_steps 20
    python launch/local_multinode.py stop --state /tmp/rlkit-cluster

Each node is its own ``ray start --block`` process: the head (no CPUs for actors: it runs the job's
driver), and worker nodes with ``--cpus`` CPUs each and a custom resource ``worker_node_I`` so a
test can pin or find actors per node. Every node gets its own port ranges (several raylets on one
machine must not pick the same worker ports). The cluster uses Ray's token authentication with a
token made for it (``STATE/auth_token``): export ``RAY_AUTH_MODE=token RAY_AUTH_TOKEN=...`` before
``rlkit submit``. ``stop`` ends exactly the processes this script started, by the process ids it
recorded in the state file (``ray stop`` would end every Ray process on the machine, other users'
included); ``stop --node worker_node_1`` kills one worker node outright, as a lost machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER_PORTS = 400  # worker ports per node
STOP_WAIT_S = 20  # for a node's processes to end after its `ray start` was asked to stop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _env(token: str | None = None) -> dict[str, str]:
    # several nodes: Ray's single-machine switch (which rlkit sets for its in-process clusters) must be
    # off here, or worker nodes refuse to join; every node is given 127.0.0.1 as its address instead.
    # Ray's token authentication, with a token made for this cluster alone
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env["RAY_worker_niceness"] = "0"
    if token:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    return env


def _spawn(args: list[str], log: Path, token: str) -> int:
    out = open(log, "ab")
    process = subprocess.Popen([_ray(), "start", "--block", "--disable-usage-stats", *args], stdout=out,
                               stderr=subprocess.STDOUT, env=_env(token), start_new_session=True)
    return process.pid


def start(state_dir: Path, workers: int, cpus: int, head_cpus: int = 0, timeout_s: float = 180) -> dict:
    """Start the nodes, wait until all of them joined, record them in ``state_dir/cluster.json``."""
    state_dir.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix="rlkit-ray-", dir="/tmp"))  # short: socket paths have a length limit
    gcs, dashboard = free_port(), free_port()
    # worker port ranges below the kernel's ephemeral range (32768 up), where free_port() draws the
    # agents' ports from: the two must never meet
    base = 10100 + (os.getpid() % 40) * WORKER_PORTS
    head = ["--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--num-cpus", str(head_cpus),
            "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
            "--temp-dir", str(temp), "--min-worker-port", str(base), "--max-worker-port", str(base + WORKER_PORTS - 1)]
    import secrets

    token = secrets.token_hex(32)
    nodes = [{"name": "head", "pid": _spawn(head, state_dir / "head.log", token)}]
    state = {"address": f"127.0.0.1:{gcs}", "dashboard": f"http://127.0.0.1:{dashboard}", "temp_dir": str(temp),
             "token": token, "nodes": nodes}
    _write(state_dir, state)
    _wait_for_nodes(state, 1, timeout_s)
    for i in range(workers):
        low = base + (i + 1) * WORKER_PORTS
        # every agent of a node listens on fixed default ports: on one machine each node needs its own
        agent_ports = [f"--{name}={free_port()}" for name in (
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
            "runtime-env-agent-port", "node-manager-port", "object-manager-port")]
        # and its own temp dir: nodes sharing one would race for the same socket file names
        node_temp = temp / f"w{i}"
        args = [*agent_ports, "--address", state["address"], "--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus),
                "--temp-dir", str(node_temp),
                "--resources", json.dumps({f"worker_node_{i}": 1}), "--min-worker-port", str(low),
                "--max-worker-port", str(low + WORKER_PORTS - 1)]
        nodes.append({"name": f"worker_node_{i}", "pid": _spawn(args, state_dir / f"worker_node_{i}.log", token)})
        _write(state_dir, state)
    _wait_for_nodes(state, 1 + workers, timeout_s)
    _wait_for_dashboard(state["dashboard"], timeout_s)
    (state_dir / "auth_token").write_text(token + "\n")
    (state_dir / "auth_token").chmod(0o600)
    return state


def stop(state_dir: Path, node: str | None = None) -> None:
    """Stop the recorded cluster, or kill one of its worker nodes as a lost machine would go.

    The whole cluster: each node's ``ray start`` is asked to stop (SIGTERM to that process alone,
    so it ends its own processes in order and the head's GCS is still there while the worker
    nodes drain), worker nodes first; whatever of a node's process group is left after
    ``STOP_WAIT_S`` is killed. One node (``node="worker_node_1"``): its process group is killed at
    once, with no drain, as when a machine is lost.
    """
    state = json.loads((state_dir / "cluster.json").read_text())
    if node is not None:
        targets = [n for n in state["nodes"] if n["name"] == node]
        if not targets:
            raise SystemExit(f"no node {node!r} (nodes: {', '.join(n['name'] for n in state['nodes'])})")
        _signal_group(targets[0]["pid"], signal.SIGKILL)
        return
    workers = [n for n in state["nodes"] if n["name"] != "head"]
    head = [n for n in state["nodes"] if n["name"] == "head"]
    for group in (workers, head):
        for n in group:
            try:
                os.kill(n["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline and any(_alive_group(n["pid"]) for n in group):
            time.sleep(0.2)
        for n in group:
            _signal_group(n["pid"], signal.SIGKILL)
    subprocess.run(["rm", "-rf", state["temp_dir"]], check=False)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _alive_group(pgid: int) -> bool:
    """Whether a process of the group still runs. Zombies do not count: where nothing reaps them
    (a container whose init does not), they stay in the group after they exited."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # it ended while we looked
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _write(state_dir: Path, state: dict) -> None:
    (state_dir / "cluster.json").write_text(json.dumps(state, indent=2) + "\n")


def _wait_for_nodes(state: dict, count: int, timeout_s: float) -> None:
    """Until the cluster lists ``count`` live nodes (asked by a short-lived process, not this one)."""
    probe = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
             "print(sum(n['Alive'] for n in ray.nodes()))")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-c", probe, state["address"]], capture_output=True, text=True,
                             env=_env(state["token"]), timeout=timeout_s)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1)
    raise TimeoutError(f"the cluster at {state['address']} did not reach {count} live nodes in {timeout_s:g} s")


def _wait_for_dashboard(url: str, timeout_s: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=5):
                return
        except urllib.error.HTTPError:
            return  # it answered (401 without the cluster's token): it is up
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"the dashboard (Jobs API) at {url} did not answer in {timeout_s:g} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("start")
    up.add_argument("--workers", type=int, default=2)
    up.add_argument("--cpus", type=int, default=2, help="CPUs of each worker node")
    up.add_argument("--state", type=Path, required=True, help="folder for the state file and node logs")
    down = sub.add_parser("stop")
    down.add_argument("--state", type=Path, required=True)
    down.add_argument("--node", default=None, help="stop one node (e.g. worker_node_1), as a lost machine")
    args = parser.parse_args()
    if args.command == "start":
        state = start(args.state, args.workers, args.cpus)
        print(json.dumps({k: state[k] for k in ("address", "dashboard")}))
        print(f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(cat {args.state}/auth_token)   # for rlkit submit",
              file=sys.stderr)
    else:
        stop(args.state, args.node)


if __name__ == "__main__":
    main()
