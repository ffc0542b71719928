"""A cgroup per sandbox run, where this machine lets us make one: memory and tasks, for the whole run.

The rlimits bound each process (address space, CPU seconds); a cgroup bounds what the run uses
in all: resident memory together with the tmpfs pages it wrote (``memory_mb + disk_mb``), and the
number of tasks (threads count) it may hold at once. Both cgroup versions are handled: v2 where
our own cgroup delegates ``memory`` and ``pids`` to its children, v1 where the ``memory`` and
``pids`` hierarchies are mounted and writable (as root in most containers). Where neither works
the run goes on with the rlimits alone; ``available()`` says which, for ``isolation_layers``.

The sandboxed process is moved in by the parent before it runs anything of the program's:
bubblewrap reports its pid (``--info-fd``) and waits (``--block-fd``) until it is told to go on.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import os
import threading
import time
from dataclasses import dataclass

CGROUP_ROOT = "/sys/fs/cgroup"
_counter = itertools.count()


@dataclass
class RunCgroup:
    """The cgroups (one per hierarchy) of one run; kept for later runs once it is empty (``release``)."""

    paths: list[str]
    version: int
    oom_kills_before: int = 0  # the kernel's count when this run took it
    limits: tuple[int, int] = (0, 0)  # (memory bytes, tasks) last written

    def add(self, pid: int) -> None:
        for path in self.paths:
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write(str(pid))

    def oom_kills(self) -> int:
        """How many tasks the kernel has killed in it for going over its memory, ever."""
        for path in self.paths:
            for name in ("memory.events", "memory.oom_control"):
                try:
                    with open(os.path.join(path, name)) as f:
                        counts = dict(line.split() for line in f if len(line.split()) == 2)
                except OSError:
                    continue
                if "oom_kill" in counts:
                    return int(counts["oom_kill"])
        return 0

    def oom_killed(self) -> bool:
        """Whether the kernel killed a task of this run for going over its memory."""
        return self.oom_kills() > self.oom_kills_before

    def empty(self, within_s: float) -> bool:
        """Wait until no task is left in it (a killed run's tasks take a moment to exit)."""
        deadline, pause = time.monotonic() + within_s, 0.0005
        while True:
            try:
                if all(not _read(os.path.join(path, "cgroup.procs")).strip() for path in self.paths):
                    return True
            except OSError:
                return False
            if time.monotonic() > deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def settled(self) -> bool:
        """No task counted any more: the pids controller releases exited tasks up to seconds late,
        and a group that still counts them would refuse the next run's first tasks."""
        try:
            return all(_read(os.path.join(path, "pids.current")).strip() == "0"
                       for path in self.paths if os.path.exists(os.path.join(path, "pids.current")))
        except OSError:
            return False

    def remove(self) -> None:
        for path in self.paths:
            try:
                os.rmdir(path)
            except OSError:
                pass


# Making and removing a memory cgroup costs milliseconds (a third of a run's start): an emptied
# one is kept for the next run, and the kept ones are removed when this process exits.
_free: list[RunCgroup] = []
MAX_KEPT = 64
_lock = threading.Lock()


@functools.lru_cache(maxsize=None)
def parents() -> tuple[int, tuple[str, ...]]:
    """(cgroup version, the folders under which a run's cgroups are made); (0, ()) where none can be."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f if line.count(":") >= 2]
    except OSError:
        return 0, ()
    own = {controller: path for _, controllers, path in lines for controller in controllers.split(",")}
    v2 = next((path for hierarchy, controllers, path in lines if hierarchy == "0" and controllers == ""), None)
    if v2 is not None and os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")):
        parent = os.path.join(CGROUP_ROOT, v2.lstrip("/"))
        if _delegated(parent) and _can_make_children([parent]):
            return 2, (parent,)
    folders = tuple(os.path.join(CGROUP_ROOT, controller, own[controller].lstrip("/"))
                    for controller in ("memory", "pids") if controller in own)
    if len(folders) == 2 and all(os.path.isdir(folder) for folder in folders) and _can_make_children(list(folders)):
        return 1, folders
    return 0, ()


def _delegated(parent: str) -> bool:
    try:
        with open(os.path.join(parent, "cgroup.subtree_control")) as f:
            return {"memory", "pids"} <= set(f.read().split())
    except OSError:
        return False


def _can_make_children(folders: list[str]) -> bool:
    for folder in folders:
        probe = os.path.join(folder, f"rlkit-sandbox-probe-{os.getpid()}")
        try:
            os.mkdir(probe)
            os.rmdir(probe)
        except OSError:
            return False
    return True


def available() -> str:
    """The layer's name for ``isolation_layers`` ("cgroup-v1(memory,pids)"), or "" where there is none."""
    version, folders = parents()
    return f"cgroup-v{version}(memory,pids)" if folders else ""


def acquire(memory_bytes: int, max_tasks: int) -> RunCgroup | None:
    """A run's cgroups with these limits (a kept one, or new), or None where none can be made here."""
    version, folders = parents()
    if not folders:
        return None
    with _lock:
        group = next((kept for kept in _free if kept.settled()), None)
        if group is not None:
            _free.remove(group)
    if group is None:
        group = _make(version, folders)
        if group is None:
            return None
    try:
        if group.limits == (memory_bytes, max_tasks):
            pass  # a kept group with these limits already
        elif version == 2:
            _write(group.paths[0], "memory.max", memory_bytes)
            _write(group.paths[0], "memory.swap.max", 0, required=False)
            _write(group.paths[0], "pids.max", max_tasks)
        else:
            memory, pids = group.paths
            # memsw (memory + swap) must stay >= memory: lower it last when shrinking, raise it first when growing
            _write(memory, "memory.memsw.limit_in_bytes", -1, required=False)
            _write(memory, "memory.limit_in_bytes", memory_bytes)
            _write(memory, "memory.memsw.limit_in_bytes", memory_bytes, required=False)  # no swapping past it
            _write(pids, "pids.max", max_tasks)
    except OSError:
        group.remove()
        return None
    group.limits = (memory_bytes, max_tasks)
    group.oom_kills_before = group.oom_kills()
    return group


def release(group: RunCgroup) -> None:
    """Give a run's cgroups back once they are empty (else remove them)."""
    if group.empty(within_s=5.0) and len(_free) < MAX_KEPT:
        with _lock:
            _free.append(group)
    else:
        group.remove()


def _make(version: int, folders: tuple[str, ...]) -> RunCgroup | None:
    name = f"rlkit-sandbox-{os.getpid()}-{next(_counter)}"
    group = RunCgroup([], version)
    try:
        for folder in folders:
            path = os.path.join(folder, name)
            os.mkdir(path)
            group.paths.append(path)
    except OSError:
        group.remove()
        return None
    return group


@atexit.register
def _remove_kept() -> None:
    with _lock:
        for group in _free:
            group.remove()
        _free.clear()


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(folder: str, name: str, value: int, required: bool = True) -> None:
    try:
        with open(os.path.join(folder, name), "w") as f:
            f.write(str(value))
    except OSError:
        if required:
            raise
