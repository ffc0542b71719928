"""Run untrusted, model-written Python in a separate, limited, throw-away process.

``run_python(code, stdin=..., limits=SandboxLimits(...))`` runs ``code`` in a fresh interpreter
(``python -I -S -B``: no site-packages, no environment variables read, no ``.pyc`` written)
started in its own session, and returns a :class:`SandboxResult` whose ``reason`` says why it
did not succeed. ``isolation_layers(limits)`` says which layers a run gets on this machine.

Layers, from the kernel up:

1. **The kernel boundary** (``bwrap`` from bubblewrap, plus ``pyseccomp``/libseccomp): a mount
   namespace whose root holds only the interpreter and its standard library (read-only), the
   system's shared libraries (read-only), a fresh ``/sandbox`` tmpfs of ``disk_mb`` (the total disk
   the program can use) and its own ``/proc`` and ``/dev`` (``rlkit/sandbox_bwrap.py``); uid 1000
   in new user, PID, network, IPC, UTS and cgroup namespaces with every capability dropped; and a
   system-call allow-list installed before the program runs (``rlkit/sandbox_seccomp.py``): no
   new processes, no exec, no sockets but AF_UNIX, no ptrace, mount, bpf, kexec... This layer
   holds against code that gets past everything above it in the interpreter (crafted bytecode,
   an interpreter bug, ctypes).
   Where bubblewrap or libseccomp is missing the run falls back to ``unshare`` namespaces (user,
   network, PID, IPC; no mount namespace), or refuses to run when the policy requires the
   boundary (``configure(require="kernel")``, the default on Linux; ``sandbox.require`` in a run's
   config).
2. **Resource limits**, set in the child before the program runs: CPU seconds (RLIMIT_CPU),
   address space (RLIMIT_AS), the size of any file written (RLIMIT_FSIZE), open files
   (RLIMIT_NOFILE), no core dumps, and, when not running as root, RLIMIT_NPROC = 0.
3. **An audit hook** (``sys.addaudithook``, which code cannot remove once installed), installed
   before the program runs. On the first forbidden event it reports the reason and ends the
   process with ``os._exit`` (so ``try/except`` cannot swallow it): sockets but an AF_UNIX pair,
   connect, bind, name lookups; process creation; signals to other processes; ctypes; writes,
   removals, renames and chmods outside the working directory; links; reads outside the working
   directory and the standard library; raising limits; tracing and introspection. Functions the
   hook cannot see (``os.mknod``, ``os.setpriority``, ``os.pidfd_open``...) are deleted first.
   It names what was tried, which the kernel's bare ``EPERM`` does not; on its own (without the
   boundary) it is a guard against what model-written code does, not a security boundary.
4. **The parent** enforces the wall-clock timeout and the output cap (it reads the pipes as
   they fill and kills the whole process group once ``max_output_bytes`` is passed), passes a
   scrubbed environment, and deletes its temporary files in all cases.

``configure(url=...)`` (``sandbox.url``) sends every run to a remote sandbox service instead
(``rlkit/sandbox_service.py``), for clusters whose nodes should not run untrusted code at all.
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

from rlkit.sandbox_bwrap import WORKDIR
from rlkit.sandbox_types import SandboxLimits, SandboxResult, SandboxUnavailable, signal_name  # noqa: F401 (public here)

#: exit status the child uses when the guard stops it (the reason goes through the report pipe);
#: sandbox_child.py writes it as a literal so the program cannot rebind it
GUARD_EXIT = 113

# The child's side (rlkit/sandbox_child.py), passed to ``python -c``: the child runs without
# site-packages, so it could not import it from the installed package.
_CHILD = Path(__file__).with_name("sandbox_child.py").read_text(encoding="utf-8")


@dataclass(frozen=True)
class SandboxPolicy:
    """Process-wide: what runs require, and where they go (``configure``)."""

    require: str = "kernel" if sys.platform.startswith("linux") else "any"  # "kernel" or "any"
    url: str | None = None  # a sandbox service (rlkit/sandbox_service.py); None: run here


_policy = SandboxPolicy()
REQUIRE_CHOICES = ("kernel", "any")


def configure(require: str | None = None, url: str | None = None) -> SandboxPolicy:
    """Set this process's policy (a run's ``sandbox`` config section does it in every actor)."""
    global _policy
    require = require or SandboxPolicy().require
    if require not in REQUIRE_CHOICES:
        raise ValueError(f"sandbox.require: {require!r} is not one of {', '.join(REQUIRE_CHOICES)}")
    _policy = SandboxPolicy(require=require, url=url or None)
    return _policy


def policy() -> SandboxPolicy:
    """This process's policy."""
    return _policy


@dataclass
class _Collected:
    stdout: bytearray
    stderr: bytearray
    report: bytearray
    stopped: str  # why the parent killed it, "" if it did not
    out_of_memory: bool = False  # its cgroup's memory limit killed a task of it


def run_python(code: str, *, stdin: str = "", limits: SandboxLimits | None = None,
               python: str | None = None) -> SandboxResult:
    """Run ``code`` as a program in the sandbox and wait for it (at most ``limits.timeout_s``).

    ``stdin`` is the program's standard input; ``python`` the interpreter (default: this one).
    With a service configured (``configure(url=...)``) the run goes there instead. Raises
    :class:`SandboxUnavailable` when the policy requires the kernel boundary and it is missing here.
    """
    limits = limits or SandboxLimits()
    if _policy.url and python is None:
        from rlkit.sandbox_client import RemoteSandbox

        return RemoteSandbox(_policy.url).run_python(code, stdin=stdin, limits=limits)
    python = python or sys.executable
    kernel = use_kernel_boundary(limits, python)
    base = os.path.realpath(tempfile.mkdtemp(prefix="rlkit-sandbox-"))
    workdir = WORKDIR if kernel else os.path.join(base, "work")
    started = time.monotonic()
    try:
        if not kernel:
            os.mkdir(workdir, 0o700)
        program_fd = _readable_fd(os.path.join(base, "program.py"), code.encode("utf-8", "surrogatepass"))  # unlinked: only the fd is left
        stdin_path = os.path.join(base, "stdin")
        with open(stdin_path, "w", encoding="utf-8") as f:
            f.write(stdin)
        try:
            collected, returncode = _execute(python, kernel, base, workdir, program_fd, stdin_path, limits, started)
        finally:
            os.close(program_fd)
    finally:
        _remove_tree(base)
    # the host folder names the run (a kernel run's /sandbox lived only in its own mount namespace)
    return _result(collected, returncode, limits, time.monotonic() - started, base if kernel else workdir)


def _readable_fd(path: str, data: bytes) -> int:
    """A read-only descriptor of ``data``, its file already removed."""
    with open(path, "wb") as f:
        f.write(data)
    fd = os.open(path, os.O_RDONLY)
    os.remove(path)
    return fd


def use_kernel_boundary(limits: SandboxLimits, python: str | None = None) -> bool:
    """Whether a run with ``limits`` gets the kernel boundary; raises :class:`SandboxUnavailable`
    when the policy (or ``limits.kernel=True``) requires it and it is missing here."""
    if limits.kernel is False:
        return False
    missing = kernel_boundary_missing(python or sys.executable)
    if not missing:
        return True
    if limits.kernel or _policy.require == "kernel":
        raise SandboxUnavailable(
            f"the sandbox's kernel boundary is not available here: {missing}. Install bubblewrap "
            "(Debian/Ubuntu: apt-get install bubblewrap) and pyseccomp (pip install pyseccomp; it needs "
            "libseccomp2), or accept the weaker layers with sandbox.require: any")
    return False


@functools.lru_cache(maxsize=None)
def kernel_boundary_missing(python: str) -> str:
    """Why the kernel boundary cannot run here ("" when it can): tried once per interpreter."""
    from rlkit import sandbox_bwrap, sandbox_seccomp

    if not sys.platform.startswith("linux"):
        return f"it needs Linux namespaces and seccomp (this is {sys.platform})"
    if sandbox_bwrap.find_bwrap() is None:
        return "bwrap (bubblewrap) is not on PATH"
    if not sandbox_seccomp.available():
        return "pyseccomp or libseccomp.so.2 cannot be loaded"
    try:
        layout = sandbox_bwrap.interpreter_layout(python)
        filter_bytes = sandbox_seccomp.filter_program()
        # the extension modules programs and the child need (lib-dynload) must load in there too
        probe = subprocess.run([*sandbox_bwrap.command(layout, 2**20), layout.python, "-I", "-S", "-c",
                                "import _ctypes, _json, select, zlib"],
                               capture_output=True, timeout=30, env=_child_env("/"))
    except (OSError, subprocess.SubprocessError, RuntimeError, ValueError) as exc:
        return f"bwrap could not be started ({exc})"
    if probe.returncode != 0 or not filter_bytes:
        return "bwrap fails here: " + (probe.stderr.decode("utf-8", "replace").strip()[-300:] or
                                       f"exit status {probe.returncode}")
    return ""


def _execute(python: str, kernel: bool, base: str, workdir: str, program_fd: int, stdin_path: str,
             limits: SandboxLimits, started: float) -> tuple[_Collected, int]:
    report_read, report_write = os.pipe()
    keep = [report_write, program_fd]
    seccomp_fd = -1
    cgroup = hold = None
    if kernel:
        from rlkit import sandbox_bwrap, sandbox_cgroup, sandbox_seccomp

        layout = sandbox_bwrap.interpreter_layout(python)
        # memory in all: what it holds and what it wrote to its tmpfs, plus the interpreter's own
        cgroup = sandbox_cgroup.acquire((limits.memory_mb + limits.disk_mb + 64) * 2**20,
                                        limits.max_tasks) if limits.cgroup else None
        extra: tuple[str, ...] = ()
        if cgroup is not None:
            hold = _StartGate()
            extra = ("--info-fd", str(hold.info_write), "--block-fd", str(hold.block_read))
            keep += [hold.info_write, hold.block_read]
        prefix: tuple[str, ...] = tuple(sandbox_bwrap.command(layout, limits.disk_mb * 2**20, extra))
        child_python = layout.python
        seccomp_fd = _readable_fd(os.path.join(base, "filter.bpf"), sandbox_seccomp.filter_program())
        keep.append(seccomp_fd)
    else:
        prefix = namespace_prefix(python) if limits.use_namespaces else ()
        child_python = python
    cpu_s = max(1, math.ceil(limits.cpu_s if limits.cpu_s is not None else limits.timeout_s))
    wall_s = math.ceil(limits.timeout_s) + 2  # the child's own SIGALRM, in case this process dies first
    args = [str(report_write), workdir, str(program_fd), str(cpu_s), str(wall_s), str(limits.memory_mb * 2**20),
            str(limits.max_file_bytes), str(limits.max_open_files), "1" if os.geteuid() != 0 else "0",
            "1" if prefix else "0", str(seccomp_fd), "1" if limits.audit_hook else "0", base]  # base: names the run
    try:
        with open(stdin_path, "rb") as stdin:
            proc = subprocess.Popen([*prefix, child_python, "-I", "-S", "-B", "-X", "utf8", "-c", _CHILD, *args],
                                    stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    cwd=base if kernel else workdir, env=_child_env(workdir),
                                    pass_fds=tuple(keep), start_new_session=True)
    except BaseException:
        os.close(report_read)
        if hold is not None:
            hold.close()
        if cgroup is not None:
            sandbox_cgroup.release(cgroup)
        raise
    finally:
        os.close(report_write)
        if seccomp_fd >= 0:
            os.close(seccomp_fd)
    out_of_memory = False
    try:
        if hold is not None:
            hold.start_in(cgroup, started + limits.timeout_s)
        collected = _collect(proc, report_read, limits, started + limits.timeout_s)
        returncode = _wait(proc, collected, limits, started + limits.timeout_s)
    finally:
        _kill_group(proc)  # nothing of the run may outlive it, whatever happened above
        for stream in (proc.stdout, proc.stderr):
            stream.close()
        os.close(report_read)
        if hold is not None:
            hold.close()
        if cgroup is not None:
            out_of_memory = cgroup.oom_killed()
            sandbox_cgroup.release(cgroup)
    collected.out_of_memory = out_of_memory
    return collected, returncode


class _StartGate:
    """bubblewrap tells the sandboxed process's pid (``--info-fd``) and holds it (``--block-fd``)
    until it is in its cgroup: nothing of the program's runs outside it."""

    def __init__(self) -> None:
        self.info_read, self.info_write = os.pipe()
        self.block_read, self.block_write = os.pipe()
        self._open = [self.info_read, self.info_write, self.block_read, self.block_write]

    def start_in(self, cgroup, deadline: float) -> None:
        import json

        for fd in (self.info_write, self.block_read):  # the child's ends, now that it has them
            self._close(fd)
        text = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self.info_read, selectors.EVENT_READ)
            while b"}" not in text and time.monotonic() < deadline:
                if selector.select(max(0.0, deadline - time.monotonic())):
                    chunk = os.read(self.info_read, 4096)
                    if not chunk:
                        break
                    text += chunk
        try:
            pid = int(json.loads(text.decode())["child-pid"])
        except (ValueError, KeyError):
            return  # bwrap failed before starting it: it reports that itself
        cgroup.add(pid)
        os.write(self.block_write, b"1")

    def _close(self, fd: int) -> None:
        if fd in self._open:
            self._open.remove(fd)
            os.close(fd)

    def close(self) -> None:
        for fd in list(self._open):
            self._close(fd)


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
        # relayed by the PID-namespace init; the program holds this pipe too, and a note can only
        # turn its status into a death by a signal (a violation), never into a success
        if note.startswith("status signal ") and note.split()[-1].isdigit() and int(note.split()[-1]) > 0:
            returncode = -int(note.split()[-1])
    notes = [n for n in notes if n and not n.startswith("status ")]
    reason, violation = _reason(got.stopped, notes, returncode, stderr, limits, duration, got.out_of_memory)
    return SandboxResult(ok=not reason, exit_code=returncode, stdout=stdout, stderr=stderr, reason=reason,
                         violation=violation, duration_s=duration, workdir=workdir)


def _reason(stopped: str, notes: list[str], returncode: int, stderr: str, limits: SandboxLimits,
            duration: float, out_of_memory: bool = False) -> tuple[str, bool]:
    """(reason, violation): the parent's own kill first, then what the child reported, then the status."""
    if stopped:
        return stopped, True
    if notes:
        return notes[0], notes[0].startswith(("blocked", "memory"))
    if returncode == 0:
        return "", False
    cpu_s = max(1, math.ceil(limits.cpu_s if limits.cpu_s is not None else limits.timeout_s))
    if returncode == -signal.SIGKILL and out_of_memory:
        return "memory limit (cgroup)", True
    if returncode == -signal.SIGXCPU or (returncode == -signal.SIGKILL and duration >= cpu_s):
        return f"cpu time limit ({cpu_s}s)", True
    if returncode < 0:
        return f"killed by signal {-returncode}{signal_name(-returncode)}", True
    last = stderr.strip().splitlines()[-1:] or [""]
    if last[0].startswith("MemoryError"):
        return "memory limit", True
    return f"exit status {returncode}" + (f": {last[0][:200]}" if last[0] else ""), False



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


def isolation_layers(limits: SandboxLimits | None = None, python: str | None = None) -> tuple[str, ...]:
    """The layers a run with ``limits`` gets on this machine, for logs and docs (raises
    :class:`SandboxUnavailable` as a run would, when the boundary is required and missing)."""
    limits = limits or SandboxLimits()
    if _policy.url and python is None:  # the service's own layers (and it is reachable: else this raises)
        from rlkit.sandbox_client import RemoteSandbox

        return (f"service({_policy.url})", *RemoteSandbox(_policy.url).health().get("layers", []))
    python = python or sys.executable
    layers = []
    if use_kernel_boundary(limits, python):
        from rlkit import sandbox_cgroup

        layers += ["mount-namespace(/opt/python ro, /usr/lib ro, /sandbox tmpfs %dMB)" % limits.disk_mb,
                   "namespaces(user,pid,net,ipc,uts,cgroup)", "uid-1000,no-capabilities", "seccomp"]
        if limits.cgroup and sandbox_cgroup.available():
            layers.append(sandbox_cgroup.available())
    elif limits.use_namespaces and namespace_prefix(python):
        prefix = namespace_prefix(python)
        kinds = [flag[2:] for flag in prefix if flag in ("--user", "--net", "--pid", "--ipc")]
        layers.append("namespaces(" + ",".join(kinds) + ")")
    layers.append("rlimits" + ("" if os.geteuid() == 0 else "+nproc"))
    if limits.audit_hook:
        layers.append("audit-hook")
    return tuple(layers)
