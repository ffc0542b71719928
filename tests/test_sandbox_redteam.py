"""The red-team suite: every attack of ``tests/sandbox_attacks.py`` against the sandbox, three ways.

* **full** (the kernel boundary and the audit hook): nothing gets out, and the layer that stopped
  each attack first is recorded;
* **kernel alone** (``audit_hook=False``): still nothing gets out, so the boundary does not lean
  on the hook;
* **hook alone** (``kernel=False``, no namespaces): the crafted-bytecode and file-system attacks
  do get out, which shows that the boundary is what holds, not the hook.

What each attack achieved is judged outside the sandbox (files, listeners, victim processes,
secrets in the output). The table in ``docs/sandbox.md`` must say what this suite measured.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rlkit.sandbox import SandboxResult, kernel_boundary_missing

sys.path.insert(0, str(Path(__file__).parent))
from sandbox_attacks import ATTACKS, Attack, Targets  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LIMITS = {"timeout_s": 1.0, "memory_mb": 256, "max_output_bytes": 100_000, "disk_mb": 16}
MODES = {"full": {}, "kernel alone": {"audit_hook": False}, "hook alone": {"kernel": False, "use_namespaces": False}}
# what the hook alone cannot hold: the file system it does not see, and code that rewrites it
HOOK_ALONE_ESCAPES = {"list a host folder", "mknod recovered by re-importing posix", "crafted bytecode past the hook",
                      "list the machine's processes", "a 48 MB disk bomb in 6 MB files"}

# on Linux the boundary is what is under test: without bubblewrap these fail, naming what is missing
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel boundary is Linux's")


def test_the_kernel_boundary_is_here():
    assert not kernel_boundary_missing(sys.executable), "install bubblewrap (apt-get install bubblewrap), as .ci/run does"


class Outside:
    """The host side of the attacks: secrets, victims and listeners, checked after each run."""

    def __init__(self, folder: Path):
        self.folder = folder
        secret_dir = folder / "secrets"
        secret_dir.mkdir()
        self.secret = "rlkit-redteam-" + os.urandom(8).hex()
        (secret_dir / "token.txt").write_text(self.secret)
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(8)
        self.tcp.setblocking(False)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.setblocking(False)
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(str(folder / "host.sock"))
        self.unix.listen(8)
        self.unix.setblocking(False)
        self.victim = self.worker = None
        self.targets = Targets(
            secret=self.secret, secret_file=str(secret_dir / "token.txt"), secret_dir=str(secret_dir),
            victim_file=str(folder / "victim.txt"), outside_file=str(folder / "outside.txt"),
            project_file=str(ROOT / "pyproject.toml"), tcp_port=self.tcp.getsockname()[1],
            udp_port=self.udp.getsockname()[1], unix_path=str(folder / "host.sock"), victim_pid=0, worker_pid=0)
        self.reset()

    def reset(self) -> None:
        victim = Path(self.targets.victim_file)
        victim.write_text("victim")
        victim.chmod(0o600)
        Path(self.targets.outside_file).unlink(missing_ok=True)
        if self.victim is None or self.victim.poll() is not None:
            self.victim = subprocess.Popen(["sleep", "600"])
            self.targets.victim_pid = self.victim.pid
        if self.worker is None or self.worker.poll() is not None:
            self.worker = subprocess.Popen([sys.executable, str(Path(__file__).with_name("sandbox_redteam_worker.py"))],
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=self.folder,
                                           env={**os.environ, "RLKIT_REDTEAM_SECRET": self.secret})
            self.targets.worker_pid = self.worker.pid

    def run(self, attack: Attack, limits: dict) -> tuple[SandboxResult | None, dict]:
        """Run ``attack`` in the worker; (its result, or None when the worker died; what was seen)."""
        self.reset()
        request = {"code": self.targets.fill(attack.code), "limits": limits}
        self.worker.stdin.write(json.dumps(request) + "\n")
        self.worker.stdin.flush()
        line = self.worker.stdout.readline()
        result = SandboxResult(**json.loads(line)) if line else None
        seen = {"tcp": _accepted(self.tcp), "udp": _received(self.udp), "unix": _accepted(self.unix),
                "victim_alive": self.victim.poll() is None, "worker_alive": result is not None and self.worker.poll() is None,
                "timeout_s": limits["timeout_s"], "max_output_bytes": limits["max_output_bytes"],
                "disk_bytes": limits["disk_mb"] * 2**20}
        return result, seen

    def close(self) -> None:
        for process in (self.victim, self.worker):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        for sock in (self.tcp, self.udp, self.unix):
            sock.close()


def _accepted(server: socket.socket) -> bool:
    try:
        server.accept()[0].close()
    except BlockingIOError:
        return False
    return True


def _received(server: socket.socket) -> bool:
    try:
        server.recv(64)
    except BlockingIOError:
        return False
    return True


def stopped_by(result: SandboxResult | None, attack: Attack) -> str:
    """The layer that stopped an attack first, from what the full sandbox reported."""
    if result is None:
        return "nothing: the worker died"
    reason = result.reason
    if result.ok:
        return attack.kernel_layer  # it ran to its end and found nothing to take
    if reason.startswith("blocked"):
        return "audit hook"
    if reason.startswith(("timeout", "output limit")):
        return "parent (" + ("wall clock" if reason.startswith("timeout") else "output cap") + ")"
    if reason.startswith(("cpu time", "memory")):
        return "rlimit (" + ("CPU" if reason.startswith("cpu") else "memory") + ")"
    if reason.startswith("killed by signal"):
        return "its own crash"
    if "ModuleNotFoundError" in reason:
        return "no site-packages"
    return "kernel"


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """{mode: {attack name: (escaped, stopped by)}} for every attack in every mode."""
    outside = Outside(tmp_path_factory.mktemp("redteam"))
    found: dict[str, dict[str, tuple[bool, str]]] = {}
    try:
        for mode, extra in MODES.items():
            found[mode] = {}
            for attack in ATTACKS:
                result, seen = outside.run(attack, {**LIMITS, **extra})
                escaped = result is None or attack.escaped(result, outside.targets, seen)
                found[mode][attack.name] = (bool(escaped), stopped_by(result, attack))
    finally:
        outside.close()
    return found


def test_there_are_at_least_30_attacks_in_every_category_the_issue_names():
    assert len(ATTACKS) >= 30 and len({a.name for a in ATTACKS}) == len(ATTACKS)
    categories = {a.category for a in ATTACKS}
    assert categories >= {"files", "secrets", "network", "processes", "native code", "interpreter", "tampering",
                          "signals", "resources"}


def test_the_full_sandbox_contains_every_attack(measured):
    escaped = [name for name, (out, _) in measured["full"].items() if out]
    assert not escaped, f"got out of the full sandbox: {escaped}"


def test_the_kernel_boundary_alone_contains_every_attack(measured):
    escaped = [name for name, (out, _) in measured["kernel alone"].items() if out]
    assert not escaped, f"got out with the audit hook off: {escaped}"


def test_without_the_boundary_the_bytecode_and_file_system_attacks_get_out(measured):
    escaped = {name for name, (out, _) in measured["hook alone"].items() if out}
    assert escaped == HOOK_ALONE_ESCAPES


def test_the_docs_table_says_what_was_measured(measured):
    """``docs/sandbox.md`` has one row per attack: | attack | kind | stopped first by | kernel alone | hook alone | holds without the hook |."""
    text = (ROOT / "docs" / "sandbox.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 6:
            rows[cells[0]] = cells
    wrong = []
    for attack in ATTACKS:
        full, kernel, hook = (measured[m][attack.name] for m in MODES)
        expected = [attack.name, attack.category, full[1], _verdict(kernel[0]), _verdict(hook[0]), attack.kernel_layer]
        if rows.get(attack.name) != expected:
            wrong.append("| " + " | ".join(expected) + " |")
    assert not wrong, "docs/sandbox.md: these rows are missing or say otherwise:\n" + "\n".join(wrong)


def _verdict(escaped: bool) -> str:
    return "gets out" if escaped else "contained"
