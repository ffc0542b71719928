"""DeepSpeed's compiled ops: build only what a run needs, in rlkit's own folder, and never wait forever.

DeepSpeed compiles some of its C++ ops at first use, with ``torch.utils.cpp_extension``, into
``TORCH_EXTENSIONS_DIR``: by default one folder in the home directory that every Python environment
of the user shares. A build holds a ``lock`` file in the op's folder while it compiles. A build
killed midway (Ctrl-C, a preempted job, a test run stopped) leaves the lock behind, and torch makes
every later build of that op wait for it to go away, forever and without a word.

So a learner, before DeepSpeed starts:

* never builds DeepSpeed's CPU shared-memory communication op (``deepspeed_shm_comm``). DeepSpeed
  uses it only for its inference all-reduce; training reduces gradients through
  ``torch.distributed`` (gloo or NCCL), on one rank or many;
* builds any op it does need into a folder of the current Python environment
  (:func:`extensions_dir`), unless the user set ``TORCH_EXTENSIONS_DIR``;
* waits on another build's lock for at most ``cluster.op_lock_timeout_s``, then stops with an error
  that names the lock file (:func:`bounded_build_locks`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

OPS_NEVER_BUILT = ("deepspeed_shm_comm",)  # DeepSpeed builder NAMEs


class OpBuildLockTimeout(RuntimeError):
    """Another build's lock file did not go away in time."""


def extensions_dir() -> Path:
    """Where this environment's compiled ops go: inside the environment (``sys.prefix``) when it can
    be written to, else a folder in the user's cache named after the environment. Either way one
    environment's builds never meet another's, and the torch version is part of the path."""
    import torch

    version = f"torch-{torch.__version__}"
    inside = Path(sys.prefix) / "var" / "rlkit" / "torch_extensions" / version
    if _writable(inside):
        return inside
    env = hashlib.sha1(sys.prefix.encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "rlkit" / "torch_extensions" / env / version


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


def prepare_op_builds() -> Path:
    """Call in the learner process before ``deepspeed.init_distributed``; returns the build folder."""
    folder = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or extensions_dir())
    os.environ["TORCH_EXTENSIONS_DIR"] = str(folder)
    import deepspeed.ops

    # DeepSpeed builds an op only if this table (probed once per process) marks it compatible
    compatible = deepspeed.ops.__compatible_ops__
    for name in OPS_NEVER_BUILT:
        compatible[name] = False
    return folder


@contextlib.contextmanager
def bounded_build_locks(timeout_s: float) -> Iterator[None]:
    """While inside, a wait on another process's op-build lock ends after ``timeout_s`` with
    :class:`OpBuildLockTimeout` naming the file, instead of never."""
    from torch.utils.file_baton import FileBaton

    unbounded = FileBaton.wait

    def wait(baton: FileBaton) -> None:
        deadline = time.monotonic() + timeout_s
        while os.path.exists(baton.lock_file_path):
            if time.monotonic() >= deadline:
                raise OpBuildLockTimeout(_lock_message(baton.lock_file_path, timeout_s))
            time.sleep(baton.wait_seconds)

    FileBaton.wait = wait
    try:
        yield
    finally:
        FileBaton.wait = unbounded


def _lock_message(path: str, timeout_s: float) -> str:
    try:
        age = f", last touched {time.time() - os.path.getmtime(path):.0f} s ago"
    except OSError:
        age = ""
    return (f"waited {timeout_s:g} s (cluster.op_lock_timeout_s) for another build of a compiled op to finish: "
            f"its lock file {path} is still there{age}. A build killed midway leaves it behind; if no "
            "other run is building this op, delete that file and start again.")
