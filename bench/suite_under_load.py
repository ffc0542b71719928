"""The test suite, several times in a row, on a deliberately busy machine.

    python bench/suite_under_load.py                 # 3 runs, burners on half the cores
    python bench/suite_under_load.py --runs 1 --burners 2 -- tests/test_training.py

CPU-burning processes (``while True: pass``, normal priority) run for the whole measurement and are
stopped by their own process ids. Each run is the README's test command (``pytest``, plus any
arguments after ``--``), in a fresh process. Prints and writes (``bench/results/suite_under_load.json``)
the outcome line and the wall time of every run. Exits 1 if any run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--burners", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "suite_under_load.json"))
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.burners)]
    results = []
    try:
        for run in range(1, args.runs + 1):
            started = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.pytest_args],
                                  cwd=ROOT, capture_output=True, text=True)
            seconds = time.monotonic() - started
            tail = [line for line in proc.stdout.splitlines() if line.strip()][-1:] or ["(no output)"]
            failed = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
            results.append({"run": run, "exit_code": proc.returncode, "seconds": round(seconds, 1),
                            "outcome": tail[0], "failed": failed})
            print(f"run {run}: exit {proc.returncode} in {seconds:.0f} s: {tail[0]}", flush=True)
            for line in failed:
                print(f"  {line}", flush=True)
    finally:
        for burner in burners:
            os.kill(burner.pid, signal.SIGKILL)
            burner.wait()
    record = {"burners": args.burners, "cpus": os.cpu_count(), "pytest_args": args.pytest_args, "runs": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
