"""The sandbox's kernel boundary: what a program sees, the policy that requires it, cgroups, the service.

The attacks themselves are in ``tests/test_sandbox_redteam.py``; these are the boundary's own
promises and the policy around it.
"""

from __future__ import annotations

import glob
import os
import sys

import pytest

from rlkit import sandbox, sandbox_cgroup
from rlkit.reward_pool import RewardActor
from rlkit.sandbox import SandboxLimits, SandboxUnavailable, configure, isolation_layers, run_python
from rlkit.sandbox_client import SandboxServiceError

BOUNDARY = not sandbox.kernel_boundary_missing(sys.executable)
needs_boundary = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel boundary is Linux's")
LIMITS = SandboxLimits(timeout_s=30.0)


@pytest.fixture(autouse=True)
def default_policy():
    yield
    configure()


@needs_boundary
def test_the_program_sees_only_the_interpreter_its_libraries_and_a_fresh_work_dir():
    code = ("import os, sys\nprint(sorted(os.listdir('/')))\nprint(os.getcwd(), os.getuid(), os.getgid())\n"
            "print(sorted(os.listdir('/opt/python/lib/python%d.%d/site-packages' % sys.version_info[:2])))\n"
            "print(sorted(os.listdir('/sandbox')))")
    result = run_python(code, limits=LIMITS)
    assert result.ok, result.reason
    root, where, site, work = result.stdout.splitlines()
    assert not {"'etc'", "'root'", "'home'", "'tmp'"} & set(root.strip("[]").split(", ")) and "'sandbox'" in root
    assert where == "/sandbox 1000 1000" and site == "[]" and work == "[]"


@needs_boundary
def test_common_standard_library_use_works_under_the_system_call_filter():
    code = ("import asyncio, decimal, json, sqlite3, tempfile, threading, zoneinfo, hashlib, random, re\n"
            "async def main():\n    await asyncio.sleep(0.01)\n    return 3\n"
            "assert asyncio.run(main()) == 3\n"
            "t = threading.Thread(target=lambda: None); t.start(); t.join()\n"
            "db = sqlite3.connect(':memory:'); db.execute('create table t (x)'); db.execute('insert into t values (1)')\n"
            "with tempfile.NamedTemporaryFile('w') as f:\n    f.write('x')\n"
            "print(json.dumps([str(decimal.Decimal('1.1') * 2), zoneinfo.ZoneInfo('UTC').key, "
            "len(hashlib.sha256(b'').hexdigest()), random.random() < 1]))")
    result = run_python(code, limits=LIMITS)
    assert result.ok, result.reason + result.stderr[-500:]
    assert result.stdout.strip() == '["2.2", "UTC", 64, true]'


@needs_boundary
def test_the_disk_quota_is_for_the_whole_work_dir():
    code = ("import errno\nwritten = 0\ntry:\n    for i in range(10):\n"
            "        open(f'f{i}', 'wb').write(b'x' * 1_000_000); written += 1\n"
            "except OSError as exc:\n    print('full after', written, errno.errorcode[exc.errno])")
    result = run_python(code, limits=SandboxLimits(timeout_s=30.0, disk_mb=4))
    assert "full after" in result.stdout and "ENOSPC" in result.stdout, result.stdout + result.reason
    assert int(result.stdout.split()[2]) <= 4


@pytest.mark.skipif(not (BOUNDARY and sandbox_cgroup.available()), reason="no cgroup can be made here")
def test_a_runs_cgroup_holds_its_threads_and_is_emptied_afterwards():
    code = ("import threading, time\nstarted = 0\ntry:\n    for _ in range(500):\n"
            "        threading.Thread(target=time.sleep, args=(1,), daemon=True).start(); started += 1\n"
            "except RuntimeError:\n    pass\nprint(started)")
    result = run_python(code, limits=SandboxLimits(timeout_s=30.0, memory_mb=4096, max_tasks=16))
    assert result.ok, result.reason
    assert 0 < int(result.stdout) < 16  # the cgroup's task limit, not the address space, stopped it
    assert any(layer.startswith("cgroup") for layer in isolation_layers())
    # kept for the next run, with nothing left in them; removed when this process exits
    kept = [path for folder in sandbox_cgroup.parents()[1] for path in glob.glob(f"{folder}/rlkit-sandbox-{os.getpid()}-*")]
    assert kept and all(not open(f"{path}/cgroup.procs").read().strip() for path in kept)


def test_a_policy_that_requires_the_boundary_refuses_to_run_without_it(monkeypatch):
    monkeypatch.setattr(sandbox, "kernel_boundary_missing", lambda python: "bwrap (bubblewrap) is not on PATH")
    configure(require="kernel")
    with pytest.raises(SandboxUnavailable, match="bwrap .bubblewrap. is not on PATH.*apt-get install bubblewrap"):
        run_python("print(1)", limits=LIMITS)
    # a reward actor of a run with sandbox.require: kernel stops at its start, saying so
    with pytest.raises(SandboxUnavailable, match="sandbox.require: any"):
        RewardActor([("code_exec", "code_exec")], {}, ("kernel", None))
    # sandbox.require: any runs with the other layers, and says which
    configure(require="any")
    result = run_python("print(1)", limits=LIMITS)
    assert result.ok and "seccomp" not in isolation_layers() and "audit-hook" in isolation_layers()


def test_a_bad_policy_is_named():
    with pytest.raises(ValueError, match="sandbox.require: 'kernal' is not one of kernel, any"):
        configure(require="kernal")


def test_a_configured_service_runs_the_programs(caplog):
    from rlkit.sandbox_service import serve

    configure(require="any")
    with serve(port=0, limits=SandboxLimits(timeout_s=30.0)) as server:
        configure(require="any", url=server.url)
        assert isolation_layers() == (f"service({server.url})", *server.layers)  # the service's own layers
        result = run_python("print(input() * 2)", stdin="ab\n", limits=LIMITS)
        assert result.ok and result.stdout == "abab\n"
        blocked = run_python("import socket; socket.socket()", limits=LIMITS)
        assert not blocked.ok and (blocked.violation or "PermissionError" in blocked.reason)
    # a service that is not there is named when the policy is set up (code_exec asks at its start)
    configure(require="any", url=server.url)
    with pytest.raises(SandboxServiceError, match=server.url):
        isolation_layers()
