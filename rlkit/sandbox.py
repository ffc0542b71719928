"""Run untrusted, model-written Python in a separate, limited, throw-away process.

``run_python(code, stdin=..., limits=SandboxLimits(...))`` runs ``code`` in a fresh interpreter
(``python -I -S -B``: no site-packages, no environment variables read, no ``.pyc`` written)
started in its own session, inside a temporary working directory that is deleted afterwards,
and returns a :class:`SandboxResult` whose ``reason`` says why it did not succeed.

Layers, from the kernel up (``isolation_layers()`` says which ones this machine provides):

1. **Namespaces** (when ``unshare`` works here: as root, or where unprivileged user namespaces
   are enabled): a new user, network, PID and IPC namespace. The network namespace has no
   interface but a down loopback, so nothing can be reached; in the PID namespace no process
   outside is visible, so none can be signalled, and when its first process dies the kernel kills
   everything left in it. Where ``unshare`` fails (e.g. inside many containers) this layer is
   simply skipped and the layers below remain.
2. **Resource limits**, set in the child before the program runs: CPU seconds (RLIMIT_CPU),
   address space (RLIMIT_AS), the size of any file written (RLIMIT_FSIZE), open files
   (RLIMIT_NOFILE), no core dumps, and, when not running as root, RLIMIT_NPROC = 0: the child
   cannot create any process or thread (the limit counts all processes of the user, so 0 is the
   only value that is safe whatever else the user runs; root ignores it).
3. **An audit hook** (``sys.addaudithook``, which code cannot remove once installed), installed
   before the program runs. On the first forbidden event it reports the reason and ends the
   process with ``os._exit`` (so ``try/except`` cannot swallow it): any socket but an AF_UNIX
   pair (asyncio needs one), and any connect, bind or name lookup; process creation
   (``os.fork``, ``os.exec*``, ``os.posix_spawn``, ``os.system``, ``subprocess``); signals to
   other processes (``os.kill``, ``os.killpg``); ctypes and ``_ctypes`` (native code); opening
   a file for writing, or removing, renaming, creating or chmod-ing a path, outside the working
   directory; links; reading files outside the working directory, the standard library and a few
   harmless files (/dev/null, /dev/urandom, time zones); raising resource limits; tracing and
   garbage-collector introspection (ways to reach the hook's own state). Functions the hook
   cannot see but could harm others (``os.mknod``, ``os.setpriority``, ``os.sched_set*``,
   ``os.pidfd_open``, ``signal.pidfd_send_signal``) are deleted before the program runs, and
   ``_posixsubprocess.fork_exec`` is replaced by a function the guard refuses. Only the standard
   library can be imported (``-S``).
4. **The parent** enforces the wall-clock timeout and the output cap (it reads the pipes as
   they fill and kills the whole process group once ``max_output_bytes`` is passed), passes a
   scrubbed environment (PATH, locale, HOME and TMPDIR pointing at the working directory), and
   deletes the temporary directory in all cases.

What this is not: the audit hook is a guard inside the same interpreter, written against what
model-written code does; it is not a security boundary against a person set on escaping. Python
code can still reach native code through paths no audit event covers (hand-made bytecode loaded
with ``marshal``, interpreter bugs), and past the hook only the kernel layers remain, which
without namespaces and as root are just the resource limits. Reads are checked against the path
as written (symlinks already present under the allowed directories are followed). Disk use inside
the working directory is bounded per file, not in total. As root, RLIMIT_NPROC is ignored by the
kernel, so a fork that gets past the hook is contained only by the PID namespace and the timeout.
Run untrusted code on machines (or containers/VMs) that hold nothing you cannot afford to lose.
"""

from __future__ import annotations

import functools
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

#: exit status the child uses when the guard stops it (the reason goes through the report pipe);
#: sandbox_child.py writes it as a literal so the program cannot rebind it
GUARD_EXIT = 113

# The child's side (rlkit/sandbox_child.py), passed to ``python -c``: the child runs without
# site-packages, so it could not import it from the installed package.
_CHILD = Path(__file__).with_name("sandbox_child.py").read_text(encoding="utf-8")


@dataclass(frozen=True)
class SandboxLimits:
    """What one run may use. Every field has a default that suits short test programs."""

    timeout_s: float = 5.0  # wall clock, from start to exit; the process group is killed after it
    cpu_s: float | None = None  # CPU seconds (RLIMIT_CPU); None: the wall-clock timeout, rounded up
    memory_mb: int = 512  # address space (RLIMIT_AS); the interpreter itself needs ~30 MB
    max_output_bytes: int = 1_000_000  # stdout and stderr together; the run is killed past it
    max_file_bytes: int = 10_000_000  # the largest file the program may write (RLIMIT_FSIZE)
    max_open_files: int = 64  # RLIMIT_NOFILE
    use_namespaces: bool = True  # new user/net/pid/ipc namespaces when ``unshare`` works here

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or (self.cpu_s is not None and self.cpu_s <= 0):
            raise ValueError("sandbox timeout_s and cpu_s must be positive")
        if self.memory_mb < 64:
            raise ValueError(f"sandbox memory_mb must be at least 64 (the interpreter needs ~30 MB), got {self.memory_mb}")
        if self.max_output_bytes < 1 or self.max_file_bytes < 0 or self.max_open_files < 8:
            raise ValueError("sandbox max_output_bytes must be >= 1, max_file_bytes >= 0, max_open_files >= 8")


@dataclass
class SandboxResult:
    ok: bool  # exited with status 0 and no limit or guard stopped it
    exit_code: int  # negative: killed by that signal (as in subprocess)
    stdout: str  # at most max_output_bytes (together with stderr), decoded with replacement
    stderr: str
    reason: str  # "" when ok; else e.g. "timeout after 2s", "blocked: network (socket.__new__)"
    violation: bool  # the sandbox stopped it (limit, guard, signal), as opposed to failing by itself
    duration_s: float
    workdir: str  # the temporary working directory, already deleted


@dataclass
class _Collected:
    stdout: bytearray
    stderr: bytearray
    report: bytearray
    stopped: str  # why the parent killed it, "" if it did not


def run_python(code: str, *, stdin: str = "", limits: SandboxLimits | None = None,
               python: str | None = None) -> SandboxResult:
    """Run ``code`` as a program in the sandbox and wait for it (at most ``limits.timeout_s``).

    ``stdin`` is the program's standard input; ``python`` the interpreter (default: this one).
    """
    limits = limits or SandboxLimits()
    python = python or sys.executable
    base = os.path.realpath(tempfile.mkdtemp(prefix="rlkit-sandbox-"))
    workdir = os.path.join(base, "work")
    started = time.monotonic()
    try:
        os.mkdir(workdir, 0o700)
        program = os.path.join(base, "program.py")
        with open(program, "w", encoding="utf-8") as f:
            f.write(code)
        stdin_path = os.path.join(base, "stdin")
        with open(stdin_path, "w", encoding="utf-8") as f:
            f.write(stdin)
        collected, returncode = _execute(python, workdir, program, stdin_path, limits, started)
    finally:
        _remove_tree(base)
    return _result(collected, returncode, limits, time.monotonic() - started, workdir)


def _execute(python: str, workdir: str, program: str, stdin_path: str, limits: SandboxLimits,
             started: float) -> tuple[_Collected, int]:
    prefix = namespace_prefix(python) if limits.use_namespaces else ()
    report_read, report_write = os.pipe()
    cpu_s = max(1, math.ceil(limits.cpu_s if limits.cpu_s is not None else limits.timeout_s))
    wall_s = math.ceil(limits.timeout_s) + 2  # the child's own SIGALRM, in case this process dies first
    args = [str(report_write), workdir, program, str(cpu_s), str(wall_s), str(limits.memory_mb * 2**20),
            str(limits.max_file_bytes), str(limits.max_open_files), "1" if os.geteuid() != 0 else "0",
            "1" if prefix else "0"]
    try:
        with open(stdin_path, "rb") as stdin:
            proc = subprocess.Popen([*prefix, python, "-I", "-S", "-B", "-X", "utf8", "-c", _CHILD, *args],
                                    stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir,
                                    env=_child_env(workdir), pass_fds=(report_write,), start_new_session=True)
    except BaseException:
        os.close(report_read)
        raise
    finally:
        os.close(report_write)
    try:
        collected = _collect(proc, report_read, limits, started + limits.timeout_s)
        returncode = _wait(proc, collected, limits, started + limits.timeout_s)
    finally:
        _kill_group(proc)  # nothing of the run may outlive it, whatever happened above
        for stream in (proc.stdout, proc.stderr):
            stream.close()
        os.close(report_read)
    return collected, returncode


def _child_env(workdir: str) -> dict[str, str]:
    """Only what a program needs; nothing of the parent's (tokens, proxies, CUDA settings) leaks in."""
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}


def _collect(proc: subprocess.Popen, report_fd: int, limits: SandboxLimits, deadline: float) -> _Collected:
    """Read stdout, stderr and the report pipe as they fill, until EOF, the deadline or the output cap."""
    got = _Collected(bytearray(), bytearray(), bytearray(), "")
    streams = {proc.stdout.fileno(): got.stdout, proc.stderr.fileno(): got.stderr, report_fd: got.report}
    with selectors.DefaultSelector() as selector:
        for fd in streams:
            selector.register(fd, selectors.EVENT_READ)
        total = 0
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                got.stopped = f"timeout after {limits.timeout_s:g}s"
                return got
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                buffer = streams[key.fd]
                if key.fd == report_fd:
                    buffer += chunk[: max(0, 4096 - len(buffer))]
                    continue
                buffer += chunk[: max(0, limits.max_output_bytes - total)]
                total += len(chunk)
                if total > limits.max_output_bytes:
                    got.stopped = f"output limit ({limits.max_output_bytes} bytes)"
                    return got
    return got


def _wait(proc: subprocess.Popen, got: _Collected, limits: SandboxLimits, deadline: float) -> int:
    if got.stopped:
        _kill_group(proc)
        return proc.wait()
    try:
        return proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:  # closed its pipes but kept running
        got.stopped = f"timeout after {limits.timeout_s:g}s"
        _kill_group(proc)
        return proc.wait()


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the run's process group, but only while its leader is unreaped: after that the pid
    (which is the group id) may already belong to someone else."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    proc.wait()


def _result(got: _Collected, returncode: int, limits: SandboxLimits, duration: float, workdir: str) -> SandboxResult:
    stdout = got.stdout.decode("utf-8", "replace")
    stderr = got.stderr.decode("utf-8", "replace")
    notes = got.report.decode("utf-8", "replace").splitlines()
    for note in notes:
        if note.startswith("status signal "):  # relayed by the PID-namespace init
            returncode = -int(note.split()[-1])
    notes = [n for n in notes if n and not n.startswith("status ")]
    reason, violation = _reason(got.stopped, notes, returncode, stderr, limits, duration)
    return SandboxResult(ok=not reason, exit_code=returncode, stdout=stdout, stderr=stderr, reason=reason,
                         violation=violation, duration_s=duration, workdir=workdir)


def _reason(stopped: str, notes: list[str], returncode: int, stderr: str, limits: SandboxLimits,
            duration: float) -> tuple[str, bool]:
    """(reason, violation): the parent's own kill first, then what the child reported, then the status."""
    if stopped:
        return stopped, True
    if notes:
        return notes[0], notes[0].startswith(("blocked", "memory"))
    if returncode == 0:
        return "", False
    cpu_s = max(1, math.ceil(limits.cpu_s if limits.cpu_s is not None else limits.timeout_s))
    if returncode == -signal.SIGXCPU or (returncode == -signal.SIGKILL and duration >= cpu_s):
        return f"cpu time limit ({cpu_s}s)", True
    if returncode < 0:
        return f"killed by signal {-returncode}{_signal_name(-returncode)}", True
    last = stderr.strip().splitlines()[-1:] or [""]
    if last[0].startswith("MemoryError"):
        return "memory limit", True
    return f"exit status {returncode}" + (f": {last[0][:200]}" if last[0] else ""), False


def _signal_name(number: int) -> str:
    try:
        return f" ({signal.Signals(number).name})"
    except ValueError:
        return ""


def _remove_tree(path: str) -> None:
    """Delete the run's directory even where the program removed its own permissions."""
    def make_writable_and_retry(function, target, _exc):
        try:
            os.chmod(os.path.dirname(target), 0o700)
            os.chmod(target, 0o700)
            function(target)
        except OSError:
            pass

    shutil.rmtree(path, onerror=make_writable_and_retry)


@functools.lru_cache(maxsize=None)
def namespace_prefix(python: str | None = None) -> tuple[str, ...]:
    """The ``unshare`` command line that works here (tried once per interpreter), or () where none does.

    A user namespace comes first even for root: inside it the process holds no capability over
    the machine (no raw devices, no raising limits), only over its own namespaces.
    """
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    common = ("--net", "--pid", "--ipc", "--fork", "--kill-child", "--")
    for user in (("--user", "--map-root-user"), ()):
        prefix = (unshare, *user, *common)
        try:
            probe = subprocess.run([*prefix, python or sys.executable, "-I", "-S", "-c", "pass"],
                                   capture_output=True, timeout=10, env=_child_env("/"))
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return prefix
    return ()


def isolation_layers(python: str | None = None) -> tuple[str, ...]:
    """The layers a run gets on this machine, for logs and docs: namespaces, rlimits, audit hook."""
    prefix = namespace_prefix(python)
    layers = []
    if prefix:
        kinds = [flag[2:] for flag in prefix if flag in ("--user", "--net", "--pid", "--ipc")]
        layers.append("namespaces(" + ",".join(kinds) + ")")
    layers.append("rlimits" + ("" if os.geteuid() == 0 else "+nproc"))
    layers.append("audit-hook")
    return tuple(layers)
