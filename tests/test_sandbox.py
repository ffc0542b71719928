"""The sandbox: programs run, hostile ones are stopped with a reason, and this process goes on."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time

import pytest

from rlkit.sandbox import SandboxLimits, isolation_layers, namespace_prefix, run_python

# Programs that should finish get a wall clock no slow machine uses up; the tests of the timeout
# itself set a short one of their own.
LIMITS = SandboxLimits(timeout_s=30.0)


def run(code: str, **kwargs):
    result = run_python(code, limits=kwargs.pop("limits", LIMITS), **kwargs)
    assert not os.path.exists(result.workdir), "the temporary directory must be deleted"
    assert _gone_soon(result.workdir), "nothing of the run may outlive it"
    return result


def _gone_soon(workdir: str, within_s: float = 30.0) -> bool:
    """Killed processes take a moment to finish exiting (freeing their memory); none may linger."""
    deadline = time.monotonic() + within_s
    while _processes_of(workdir):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _processes_of(workdir: str) -> list[int]:
    """Live processes whose command line names this run's working directory."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if workdir.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def assert_stopped(result, reason_start: str) -> None:
    assert not result.ok
    assert result.violation
    assert result.reason.startswith(reason_start), result.reason


@pytest.fixture
def listener():
    """A TCP port on 127.0.0.1 that records whether anything connected."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def nothing_connected(server: socket.socket) -> bool:
    try:
        server.accept()[0].close()
    except BlockingIOError:
        return True
    return False


def test_a_program_runs_with_stdin_and_output():
    result = run("import json, math\nname = input()\nprint(json.dumps({'hi': name, 'r': math.sqrt(16)}))",
                 stdin="ada\n")
    assert result.ok and result.exit_code == 0 and result.reason == ""
    assert result.stdout.strip() == '{"hi": "ada", "r": 4.0}'


def test_files_inside_the_work_dir_are_allowed():
    result = run("open('a.txt', 'w').write('x')\nimport tempfile, os\nfd, p = tempfile.mkstemp()\n"
                 "os.mkdir('d'); os.rename('a.txt', 'd/b.txt'); print(open('d/b.txt').read())")
    assert result.ok, result.reason
    assert result.stdout.strip() == "x"


def test_an_exception_is_a_failure_not_a_violation():
    result = run("def f():\n    return 1 / 0\nf()")
    assert not result.ok and not result.violation
    assert result.exit_code == 1
    assert result.reason == "exit status 1: ZeroDivisionError: division by zero"


def test_a_syntax_error_is_reported():
    result = run("def f(:\n    pass")
    assert not result.ok and not result.violation
    assert result.reason.startswith("syntax error") and "line 1" in result.reason


def test_an_infinite_loop_times_out():
    # the CPU limit set well past the wall clock: which of the two stops the loop must not be a race
    result = run("while True: pass", limits=SandboxLimits(timeout_s=2.0, cpu_s=60))
    assert_stopped(result, "timeout after 2s")


def test_catching_sigxcpu_does_not_escape_the_cpu_limit():
    code = "import signal\nsignal.signal(signal.SIGXCPU, lambda *a: None)\nwhile True: pass"
    result = run(code, limits=SandboxLimits(timeout_s=20.0, cpu_s=1))
    assert_stopped(result, "cpu time limit (1s)")


@pytest.mark.parametrize("code", ["import os\nwhile True: os.fork()",
                                  "import subprocess\nsubprocess.run(['true'])",
                                  "import os\nos.system('true')",
                                  "import os\nos.execv('/bin/true', ['true'])"])
def test_process_creation_is_blocked(code):
    assert_stopped(run(code), "blocked: process creation")


def test_a_10_gb_allocation_hits_the_memory_limit():
    assert_stopped(run("x = bytearray(10 * 1024**3)"), "memory limit")


@pytest.mark.parametrize("template", [
    "open({path!r}, 'w').write('x')",
    "import os\nos.close(os.open({path!r}, os.O_WRONLY | os.O_CREAT))",
    "import pathlib\npathlib.Path({path!r}).write_text('x')",
    "import os\nos.chdir('/')\nopen({path!r}.lstrip('/'), 'w')",
    "import os\nos.symlink({path!r}, 'link')",
    "try:\n    open({path!r}, 'w')\nexcept BaseException:\n    pass\nprint('still here')",
])
def test_writing_outside_the_work_dir_is_blocked(tmp_path, template):
    target = tmp_path / "escaped.txt"
    result = run(template.format(path=str(target)))
    assert_stopped(result, "blocked:")
    assert "still here" not in result.stdout
    assert not target.exists()


@pytest.mark.parametrize("template", ["import os\nos.remove({path!r})", "import os\nos.rename({path!r}, 'mine')",
                                      "import os\nos.chmod({path!r}, 0o777)", "import shutil\nshutil.rmtree({dir!r})"])
def test_changing_files_outside_the_work_dir_is_blocked(tmp_path, template):
    target = tmp_path / "keep.txt"
    target.write_text("precious")
    result = run(template.format(path=str(target), dir=str(tmp_path)))
    assert_stopped(result, "blocked: write outside work dir")
    assert target.read_text() == "precious"


def test_reading_outside_the_allowed_dirs_is_blocked():
    assert_stopped(run("print(open('/etc/passwd').read())"), "blocked: read outside allowed dirs")


@pytest.mark.parametrize("code", ["import socket\nsocket.socket().connect(('127.0.0.1', {port}))",
                                  "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}))\n"
                                  "except BaseException:\n    pass",
                                  "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/')"])
def test_network_is_blocked(listener, code):
    result = run(code.format(port=listener.getsockname()[1]))
    assert_stopped(result, "blocked: network")
    assert nothing_connected(listener)


@pytest.mark.parametrize("code", ["print('x' * 100_000_000)", "while True:\n    print('spam ' * 20)",
                                  "import sys\nwhile True:\n    sys.stderr.write('e' * 4096)"])
def test_output_is_capped(code):
    result = run(code, limits=SandboxLimits(timeout_s=5.0, max_output_bytes=100_000))
    assert_stopped(result, "output limit (100000 bytes)")
    assert len(result.stdout) + len(result.stderr) <= 100_000


@pytest.mark.parametrize("code", ["import os\nos.kill(os.getppid(), 9)", "import os\nos.kill({pid}, 9)",
                                  "import os\nos.killpg({pgid}, 9)",
                                  "import signal, os\nos.kill({pid}, signal.SIGTERM)"])
def test_signals_to_other_processes_are_blocked(code):
    result = run(code.format(pid=os.getpid(), pgid=os.getpgid(0)))
    assert_stopped(result, "blocked: signal to another process")
    os.kill(os.getpid(), 0)  # still here


def test_native_code_is_blocked():
    assert_stopped(run("import ctypes\nctypes.CDLL(None).kill(1, 9)"), "blocked: native code")


def test_the_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("RLKIT_TEST_SECRET", "hunter2")
    result = run("import os\nprint(sorted(os.environ))")
    assert result.ok, result.reason
    assert "RLKIT_TEST_SECRET" not in result.stdout and "hunter2" not in result.stdout


def test_a_program_killing_itself_is_reported_by_signal():
    result = run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert_stopped(result, "killed by signal 9")


def test_later_runs_still_work_after_hostile_ones():
    for code in ("while True: pass", "import os\nos.fork()", "x = bytearray(10 * 1024**3)"):
        assert not run(code, limits=SandboxLimits(timeout_s=1.0)).ok
    result = run("print(sum(range(10)))")
    assert result.ok and result.stdout == "45\n"


def test_isolation_layers_are_reported():
    layers = isolation_layers()
    assert "audit-hook" in layers and any(layer.startswith("rlimits") for layer in layers)
    assert any(layer.startswith("namespaces") for layer in layers) == bool(namespace_prefix())


@pytest.mark.skipif(not namespace_prefix(), reason="unshare does not work on this machine")
def test_namespaces_hold_even_without_the_audit_hook(listener):
    """The kernel layer alone: a plain interpreter in the namespaces can neither connect nor signal out."""
    port = listener.getsockname()[1]
    code = (f"import socket, os\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            f"    print('connected')\nexcept OSError as e:\n    print('net', type(e).__name__)\n"
            f"try:\n    os.kill({os.getpid()}, 0)\n    print('signalled')\nexcept OSError as e:\n    print('kill', type(e).__name__)")
    out = subprocess.run([*namespace_prefix(), sys.executable, "-I", "-S", "-c", code], capture_output=True,
                         text=True, timeout=30)
    assert "connected" not in out.stdout and "signalled" not in out.stdout, out.stdout + out.stderr
    assert "net " in out.stdout and "kill ProcessLookupError" in out.stdout
    assert nothing_connected(listener)


def test_limits_are_validated():
    with pytest.raises(ValueError):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ValueError):
        SandboxLimits(memory_mb=8)


def test_without_namespaces_the_other_layers_still_hold(tmp_path, listener):
    """The fallback where ``unshare`` is unavailable (many containers): rlimits, audit hook, parent."""
    limits = SandboxLimits(timeout_s=3.0, cpu_s=60, use_namespaces=False, max_output_bytes=10_000)
    target = tmp_path / "escaped.txt"
    cases = {"while True: pass": "timeout after 3s", "import os\nwhile True: os.fork()": "blocked: process creation",
             "x = bytearray(10 * 1024**3)": "memory limit", f"open({str(target)!r}, 'w')": "blocked: write outside",
             f"import socket\nsocket.socket().connect(('127.0.0.1', {listener.getsockname()[1]}))": "blocked: network",
             f"import os\nos.kill({os.getpid()}, 9)": "blocked: signal", "print('x' * 100_000_000)": "output limit"}
    for code, reason in cases.items():
        assert_stopped(run(code, limits=limits), reason)
    assert not target.exists() and nothing_connected(listener)
    assert run("print(6 * 7)", limits=dataclasses.replace(limits, timeout_s=30.0)).stdout == "42\n"


def test_common_standard_library_use_is_not_mistaken_for_an_attack():
    code = ("import asyncio, dataclasses, collections, tempfile, json, re, decimal, zoneinfo, sqlite3\n"
            "async def main():\n    return 1\n"
            "P = collections.namedtuple('P', 'a b')\n"
            "@dataclasses.dataclass\nclass A:\n    x: int\n"
            "with tempfile.TemporaryDirectory() as d:\n    import os\n    os.makedirs(d + '/a/b')\n"
            "    open(d + '/a/b/f', 'w').write('ok')\n"
            "sqlite3.connect(':memory:').execute('select 1')\n"
            "print(asyncio.run(main()), P(1, 2).b, A(3).x, zoneinfo.ZoneInfo('UTC'))")
    result = run(code)
    assert result.ok, result.reason + result.stderr
    assert result.stdout.split() == ["1", "2", "3", "UTC"]


def test_unix_sockets_cannot_connect_out():
    assert_stopped(run("import socket\nsocket.socket(socket.AF_UNIX).connect('/run/anything.sock')"),
                   "blocked: network (socket.connect)")


def test_a_dir_fd_outside_the_work_dir_does_not_help():
    code = ("import os\nfd = os.open(os.path.dirname(os.__file__), os.O_RDONLY)\n"
            "os.remove('rlkit_no_such_file', dir_fd=fd)")
    assert_stopped(run(code), "blocked: write outside work dir (os.remove /")
    code = ("import os\nfd = os.open(os.path.dirname(os.__file__), os.O_RDONLY)\n"
            "os.close(os.open('rlkit_no_such_file', os.O_WRONLY | os.O_CREAT, dir_fd=fd))")
    assert_stopped(run(code), "blocked: write outside work dir (os.open for writing")
