"""The sandbox's kernel boundary: the bubblewrap (``bwrap``) command line that runs one program.

Inside, the program sees a root file system that holds only:

* ``/opt/python``: the interpreter, its shared library and its standard library, read-only, with
  ``site-packages`` hidden under an empty tmpfs (the child runs ``python -I -S``);
* ``/usr/lib`` (and ``/lib``, ``/lib64`` as on the host): the shared libraries the interpreter and
  its extension modules link against, read-only;
* ``/sandbox``: a fresh tmpfs of ``SandboxLimits.disk_mb``, the working directory, the only place it
  can write;
* ``/proc`` of its own PID namespace, a minimal ``/dev`` (null, zero, random, urandom, tty) and
  ``/usr/share/zoneinfo`` (time zones).

No ``/etc``, ``/root``, ``/home``, ``/tmp`` or project files. It runs as uid/gid 1000 in new user,
PID, network, IPC, UTS and cgroup namespaces, with every capability dropped, in a session of its
own, and dies with its parent. The system-call filter (``rlkit/sandbox_seccomp.py``) is installed
by the child itself once its own set-up is done.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from dataclasses import dataclass

SANDBOX_PREFIX = "/opt/python"
WORKDIR = "/sandbox"  # a name no host path it could be confused with (the hook's checks) starts with
UID = 1000


@dataclass(frozen=True)
class InterpreterLayout:
    """Where an interpreter's parts are on the host, and where the sandbox shows them."""

    executable: str  # the real binary
    version: str  # "3.11"
    stdlib: str  # the standard library, lib-dynload inside it (a layout without is refused by the probe)
    shared_library: str | None  # libpythonX.Y.so.1.0 when the interpreter links one

    @property
    def python(self) -> str:
        """The interpreter's path inside the sandbox."""
        return f"{SANDBOX_PREFIX}/bin/python{self.version}"

    @property
    def sandbox_stdlib(self) -> str:
        return f"{SANDBOX_PREFIX}/lib/python{self.version}"


def find_bwrap() -> str | None:
    """The bubblewrap binary on PATH, or None."""
    return shutil.which("bwrap")


@functools.lru_cache(maxsize=None)
def interpreter_layout(python: str) -> InterpreterLayout:
    """Ask ``python`` where its parts are (once per interpreter)."""
    probe = ("import json, os, sys, sysconfig\n"
             "lib = sysconfig.get_config_var('INSTSONAME') if sysconfig.get_config_var('Py_ENABLE_SHARED') else None\n"
             "libdir = sysconfig.get_config_var('LIBDIR') or ''\n"
             "print(json.dumps({'executable': os.path.realpath(sys.executable),\n"
             "  'version': '%d.%d' % sys.version_info[:2],\n"
             "  'stdlib': sysconfig.get_path('stdlib'),\n"
             "  'shared_library': os.path.join(libdir, lib) if lib and os.path.exists(os.path.join(libdir, lib))\n"
             "      else None}))\n")
    out = subprocess.run([python, "-I", "-S", "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    return InterpreterLayout(**json.loads(out.stdout))


def command(layout: InterpreterLayout, disk_bytes: int, extra: tuple[str, ...] = ()) -> list[str]:
    """``bwrap ... --`` for one run (``extra``: more bwrap options); the interpreter's own arguments follow it."""
    args = [find_bwrap() or "bwrap", "--unshare-all", "--unshare-user", "--uid", str(UID), "--gid", str(UID),
            "--hostname", "sandbox", "--cap-drop", "ALL", "--die-with-parent", "--new-session", "--clearenv"]
    args += _system_libraries()
    args += ["--ro-bind", layout.executable, layout.python]
    args += ["--ro-bind", layout.stdlib, layout.sandbox_stdlib]
    if os.path.isdir(os.path.join(layout.stdlib, "site-packages")):
        args += ["--tmpfs", layout.sandbox_stdlib + "/site-packages"]
    if layout.shared_library:
        library = f"{SANDBOX_PREFIX}/lib/{os.path.basename(layout.shared_library)}"
        args += ["--ro-bind", layout.shared_library, library, "--setenv", "LD_LIBRARY_PATH", f"{SANDBOX_PREFIX}/lib"]
    if os.path.isdir("/usr/share/zoneinfo"):  # time zones (zoneinfo); nothing else of /usr/share
        args += ["--ro-bind", "/usr/share/zoneinfo", "/usr/share/zoneinfo"]
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(disk_bytes), "--tmpfs", WORKDIR, "--chdir", WORKDIR]
    for name, value in (("HOME", WORKDIR), ("TMPDIR", WORKDIR), ("LANG", "C.UTF-8"), ("LC_ALL", "C.UTF-8"),
                        ("PATH", "/usr/bin:/bin")):
        args += ["--setenv", name, value]
    return args + list(extra) + ["--"]  # inherited descriptors pass through bwrap as they are


def _system_libraries() -> list[str]:
    """Bind the host's shared-library folders read-only, keeping its layout (merged /usr or not)."""
    args: list[str] = []
    for path in ("/usr/lib", "/usr/lib64", "/usr/lib32"):
        if os.path.isdir(path) and not os.path.islink(path):
            args += ["--ro-bind", path, path]
    for path in ("/lib", "/lib64", "/lib32"):
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args
