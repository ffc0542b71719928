"""What a sandbox run is given and what it gives back: :class:`SandboxLimits`, :class:`SandboxResult`.

Kept apart from :mod:`rlkit.sandbox` so the service's client (``rlkit/sandbox_client.py``) speaks
in the same types without importing the code that runs programs here.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass


@dataclass(frozen=True)
class SandboxLimits:
    """What one run may use. Every field has a default that suits short test programs."""

    timeout_s: float = 5.0  # wall clock, from start to exit; the process group is killed after it
    cpu_s: float | None = None  # CPU seconds (RLIMIT_CPU); None: the wall-clock timeout, rounded up
    memory_mb: int = 512  # address space (RLIMIT_AS); the interpreter itself needs ~30 MB
    max_output_bytes: int = 1_000_000  # stdout and stderr together; the run is killed past it
    max_file_bytes: int = 10_000_000  # the largest file the program may write (RLIMIT_FSIZE)
    max_open_files: int = 64  # RLIMIT_NOFILE
    disk_mb: int = 64  # the whole working directory (the kernel boundary's tmpfs)
    max_tasks: int = 64  # processes and threads at once, with the boundary, where a cgroup can be made
    cgroup: bool = True  # with the boundary: a cgroup for the run where one can be made (about 7 ms a run)
    use_namespaces: bool = True  # without the kernel boundary: unshare's user/net/pid/ipc namespaces
    kernel: bool | None = None  # None: as the policy says (configure); False: never (comparisons, tests)
    audit_hook: bool = True  # False only to show what the kernel boundary holds on its own

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or (self.cpu_s is not None and self.cpu_s <= 0):
            raise ValueError("sandbox timeout_s and cpu_s must be positive")
        if self.memory_mb < 64:
            raise ValueError(f"sandbox memory_mb must be at least 64 (the interpreter needs ~30 MB), got {self.memory_mb}")
        if self.max_output_bytes < 1 or self.max_file_bytes < 0 or self.max_open_files < 8:
            raise ValueError("sandbox max_output_bytes must be >= 1, max_file_bytes >= 0, max_open_files >= 8")
        if self.disk_mb < 1 or self.max_tasks < 4:
            raise ValueError(f"sandbox disk_mb must be >= 1 and max_tasks >= 4, got {self.disk_mb}, {self.max_tasks}")


class SandboxUnavailable(RuntimeError):
    """The policy requires the kernel boundary and this machine cannot provide it."""


@dataclass
class SandboxResult:
    ok: bool  # exited with status 0 and no limit or guard stopped it
    exit_code: int  # negative: killed by that signal (as in subprocess)
    stdout: str  # at most max_output_bytes (together with stderr), decoded with replacement
    stderr: str
    reason: str  # "" when ok; else e.g. "timeout after 2s", "blocked: network (socket.__new__)"
    violation: bool  # the sandbox stopped it (limit, guard, signal), as opposed to failing by itself
    duration_s: float
    workdir: str  # the temporary folder of the run on this machine, already deleted


def signal_name(number: int) -> str:
    """`` (SIGKILL)`` for 9: how a reason names a signal ("" for a number that is none)."""
    try:
        return f" ({signal.Signals(number).name})"
    except ValueError:
        return ""
