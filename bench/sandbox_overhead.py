"""What running one program in the sandbox costs, by the layers it gets.

    python bench/sandbox_overhead.py                 # 100 runs of each program in each setting
    python bench/sandbox_overhead.py --runs 30

Settings, from the weakest to the strongest:

* ``hook``: a fresh interpreter with rlimits and the audit hook, no namespaces;
* ``unshare``: plus user/network/PID/IPC namespaces from ``unshare`` (the fallback);
* ``kernel``: the kernel boundary (bubblewrap's mount namespace, seccomp, a cgroup where one can be
  made), the default on Linux; ``kernel, no cgroup``: the same without the cgroup;
* ``service``: ``kernel`` behind the HTTP service on loopback (``RemoteSandbox`` to ``serve()``).

Programs: ``empty`` (``pass``: the fixed cost), and ``tests`` (a small solution and three asserts,
as ``code_exec`` runs them). Reported per setting and program: the median and 90th percentile of
wall-clock seconds per run, one run at a time. Also ``code_exec``'s whole cost per completion
(its two sandbox runs: the program, then the checker) on the bundled code rows with their
reference solutions, 8 at once as the reward runs them. Writes bench/results/sandbox_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from rlkit.sandbox import SandboxLimits, configure, isolation_layers, kernel_boundary_missing, run_python

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = {
    "empty": "pass",
    "tests": ("def add3(x):\n    return x + 3\n\nassert add3(1) == 4\nassert add3(-3) == 0\n"
              "assert add3(10) == 13\nprint('ok')\n"),
}
SETTINGS = {
    "hook": SandboxLimits(kernel=False, use_namespaces=False, timeout_s=30),
    "unshare": SandboxLimits(kernel=False, use_namespaces=True, timeout_s=30),
    "kernel": SandboxLimits(kernel=True, timeout_s=30),
    "kernel, no cgroup": SandboxLimits(kernel=True, timeout_s=30, cgroup=False),
}


def timed(run, runs: int) -> dict:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - started)
        assert result.ok, result.reason
    seconds.sort()
    return {"median_s": round(statistics.median(seconds), 4), "p90_s": round(seconds[int(0.9 * (len(seconds) - 1))], 4),
            "runs": runs}


def code_exec_per_completion(rounds: int) -> dict:
    """code_exec on the bundled rows with their reference solutions: seconds per completion."""
    from rlkit.rewards.code_exec import CodeExecReward

    rows = [row for row in _code_rows() if row.get("solution")][:8]
    reward = CodeExecReward()
    completions = ["```python\n" + row["solution"] + "\n```" for row in rows]
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        scores = reward(prompts=[row["prompt"] for row in rows], completions=completions,
                        tests=[row["tests"] for row in rows])
        seconds.append((time.perf_counter() - started) / len(rows))
        assert all(score == 1.0 for score in scores), (scores, reward.last_reasons)
    return {"median_s_per_completion": round(statistics.median(seconds), 4), "batch": len(rows), "rounds": rounds}


def _code_rows() -> list[dict]:
    from rlkit import plugins

    env = plugins.envs.get("code")()
    return env.dataset("train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    configure(require="any")
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "platform": platform.platform()}, "runs": {}}
    missing = kernel_boundary_missing(sys.executable)
    settings = {name: limits for name, limits in SETTINGS.items() if not name.startswith("kernel") or not missing}
    for name, limits in settings.items():
        results["runs"][name] = {"layers": list(isolation_layers(limits))}
        for program, code in PROGRAMS.items():
            results["runs"][name][program] = timed(lambda: run_python(code, limits=limits), args.runs)
            print(name, program, results["runs"][name][program], flush=True)
    if not missing:
        from rlkit.sandbox_client import RemoteSandbox
        from rlkit.sandbox_service import serve

        with serve(port=0, limits=SandboxLimits(timeout_s=30)) as server:
            client = RemoteSandbox(server.url)
            results["runs"]["service"] = {"layers": ["http loopback"] + list(isolation_layers(SETTINGS["kernel"]))}
            for program, code in PROGRAMS.items():
                results["runs"]["service"][program] = timed(
                    lambda: client.run_python(code, limits=SandboxLimits(timeout_s=30)), args.runs)
                print("service", program, results["runs"]["service"][program], flush=True)
        configure(require="kernel")
        results["code_exec"] = code_exec_per_completion(max(3, args.runs // 10))
        print("code_exec", results["code_exec"], flush=True)
    else:
        results["kernel_missing"] = missing
    out = ROOT / "bench" / "results" / f"sandbox_overhead{'-' + args.label if args.label else ''}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
