"""The sandbox as an HTTP service, for clusters whose training nodes must not run untrusted code.

A node that may run it starts ``rlkit sandbox-serve`` (or :func:`serve`); reward actors elsewhere
score programs with ``RemoteSandbox(url).run_python(code, stdin=..., limits=...)``, which has the
call shape of :func:`rlkit.sandbox.run_python` and returns the same :class:`SandboxResult`.

The protocol is SandboxFusion's ``POST /run_code`` (bytedance/SandboxFusion,
``sandbox/server/sandbox_api.py``), so SandboxFusion clients can use this server and this client
can use a SandboxFusion server. Request: ``{"code", "language", "stdin", "run_timeout",
"memory_limit_MB", "files", "fetch_files"}`` (``compile_timeout`` and ``args`` are accepted and
ignored). Response: ``{"status": "Success" | "Failed" | "SandboxError", "message",
"compile_result": null, "run_result": {"status": "Finished" | "TimeLimitExceeded" | "Error",
"execution_time", "return_code", "stdout", "stderr"}, "executor_pod_name", "files"}``.

Ours, beyond SandboxFusion: the response's ``"rlkit"`` object carries every field of the
:class:`SandboxResult` but stdout and stderr (``reason``, ``violation``, ``exit_code``, ...), the
isolation ``layers`` and the ``limits`` the run actually got; and ``GET /health``.

Where we differ: an unknown language is answered HTTP 200 with a SandboxError naming it
(SandboxFusion's request validation answers 422), and a malformed request 400 naming the field.
Only python runs here; ``files`` and ``fetch_files`` are refused until ``run_python`` takes files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from rlkit.sandbox import isolation_layers, run_python
from rlkit.sandbox_client import RemoteSandbox, SandboxServiceError, result_from_response  # noqa: F401 (public here)
from rlkit.sandbox_types import SandboxLimits, SandboxResult

log = logging.getLogger(__name__)

PYTHON_LANGUAGES = ("python", "python3")
# reasons (rlkit.sandbox) that SandboxFusion calls TimeLimitExceeded
_TIME_LIMIT_REASONS = ("timeout", "cpu time limit")
# a body this much over the cap is read and dropped so the client gets its 413; past it we hang up
_DRAIN_FACTOR = 8


@dataclass(frozen=True)
class ServiceConfig:
    """What the server allows. A request can lower its run's timeout and memory, never raise them."""

    max_parallel: int = field(default_factory=lambda: os.cpu_count() or 1)  # runs at once; more wait
    ceiling: SandboxLimits = field(default_factory=SandboxLimits)  # the most a run gets; its other limits as they are
    max_body_bytes: int = 4 * 2**20  # larger request bodies are refused with 413
    python: str = sys.executable  # the interpreter programs run with

    def __post_init__(self) -> None:
        if self.max_parallel < 1 or self.max_body_bytes < 1:
            raise ValueError("sandbox service max_parallel and max_body_bytes must be at least 1")


class RequestRefused(Exception):
    """A request answered without running it: the HTTP ``status`` (200 for a SandboxError answer) and
    the ``message`` for the client."""

    def __init__(self, status: int, message: str, language: str = "-") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.language = language  # for the log line, when the request got that far


@dataclass(frozen=True)
class RunRequest:
    """A ``/run_code`` request once checked: the program, its input and the limits it will get."""

    code: str
    stdin: str
    limits: SandboxLimits
    language: str


# ---- the protocol: request body -> RunRequest, SandboxResult -> response body (and back) ----

def parse_run_request(body: bytes, ceiling: SandboxLimits) -> RunRequest:
    """Check a ``/run_code`` body; raise :class:`RequestRefused` (400, or 200 for a SandboxError) when it cannot run."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestRefused(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise RequestRefused(400, "request body must be a JSON object")
    code = _field(payload, "code", str, "a string", required=True)
    language = _field(payload, "language", str, "a string", required=True)
    stdin = _field(payload, "stdin", str, "a string") or ""
    run_timeout = _field(payload, "run_timeout", (int, float), "a number")
    memory_mb = _field(payload, "memory_limit_MB", int, "an integer")
    files = _field(payload, "files", dict, "an object") or {}
    fetch_files = _field(payload, "fetch_files", list, "a list") or []
    if language not in PYTHON_LANGUAGES:
        raise RequestRefused(200, f"language {language!r} is not supported by this server (only python)", language)
    if files or fetch_files:
        raise RequestRefused(200, "files are not supported by this server (files, fetch_files must be empty)",
                             language)
    return RunRequest(code, stdin, _capped(ceiling, run_timeout, memory_mb), language)


def _field(payload: dict, name: str, kind, kind_name: str, *, required: bool = False):
    value = payload.get(name)
    if value is None:
        if required:
            raise RequestRefused(400, f"missing field {name!r}")
        return None
    # bool is an int to Python, never a number or a string to a client
    if isinstance(value, bool) or not isinstance(value, kind):
        raise RequestRefused(400, f"field {name!r} must be {kind_name}, got {type(value).__name__}")
    return value


def _capped(ceiling: SandboxLimits, run_timeout: float | None, memory_mb: int | None) -> SandboxLimits:
    """The ceiling, lowered where the request asks for less. memory_limit_MB <= 0 means "no wish"
    (SandboxFusion's default is -1)."""
    timeout_s = ceiling.timeout_s
    if run_timeout is not None:
        if not math.isfinite(run_timeout) or run_timeout <= 0:
            raise RequestRefused(400, f"field 'run_timeout' must be a positive number of seconds, got {run_timeout}")
        timeout_s = min(float(run_timeout), ceiling.timeout_s)
    memory = ceiling.memory_mb
    if memory_mb is not None and memory_mb > 0:
        memory = min(memory_mb, ceiling.memory_mb)
    try:
        return dataclasses.replace(ceiling, timeout_s=timeout_s, memory_mb=memory)
    except ValueError as exc:  # e.g. under the interpreter's own needs
        raise RequestRefused(400, f"field 'memory_limit_MB': {exc}") from None


def run_response(result: SandboxResult, limits: SandboxLimits, layers: list[str]) -> dict:
    """SandboxFusion's response for a finished run, with our ``rlkit`` extension."""
    timed_out = result.reason.startswith(_TIME_LIMIT_REASONS)
    run_result = {"status": "TimeLimitExceeded" if timed_out else "Finished", "execution_time": result.duration_s,
                  # SandboxFusion has no return code for a run it stopped on time; ours is in "rlkit"
                  "return_code": None if timed_out else result.exit_code,
                  "stdout": result.stdout, "stderr": result.stderr}
    carried = {name: value for name, value in dataclasses.asdict(result).items() if name not in ("stdout", "stderr")}
    extension = {"layers": layers, "limits": dataclasses.asdict(limits), **carried}
    return {**_answer("Success" if result.ok else "Failed", result.reason), "run_result": run_result,
            "rlkit": extension}


def error_response(message: str) -> dict:
    """A SandboxError answer: the service did not run the program."""
    return _answer("SandboxError", message)


def _answer(status: str, message: str) -> dict:
    return {"status": status, "message": message, "compile_result": None, "run_result": None,
            "executor_pod_name": socket.gethostname(), "files": {}}


def layers_for(limits: SandboxLimits, python: str) -> list[str]:
    """``isolation_layers`` of runs here. The interpreter is always named: without it a process
    configured to use a service would report that service's layers."""
    return list(isolation_layers(limits, python))


# ---- the server ----

class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "rlkit-sandbox"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        started = time.monotonic()
        if self.path == "/health":
            self._reply(200, {"status": "ok", "layers": self.server.layers}, "-", 0, started)
        else:
            self._reply(404, error_response(f"no such path {self.path!r} (GET /health, POST /run_code)"), "-", 0,
                        started)

    def do_POST(self) -> None:  # noqa: N802
        started, size = time.monotonic(), 0
        try:
            if self.path != "/run_code":
                raise RequestRefused(404, f"no such path {self.path!r} (POST /run_code)")
            size = self._content_length()
            self._refuse_oversize(size)
            request = parse_run_request(self.rfile.read(size), self.server.config.ceiling)
            self._reply(200, self._run(request), request.language, size, started)
        except RequestRefused as refusal:
            self._reply(refusal.status, error_response(refusal.message), refusal.language, size, started)

    def _content_length(self) -> int:
        try:
            return max(0, int(self.headers.get("Content-Length", "")))
        except ValueError:
            raise RequestRefused(411, "a Content-Length header is required") from None

    def _refuse_oversize(self, size: int) -> None:
        limit = self.server.config.max_body_bytes
        if size <= limit:
            return
        if size <= _DRAIN_FACTOR * limit:  # a client that sends everything before reading still gets the 413
            left = size
            while left > 0:
                chunk = self.rfile.read(min(65536, left))
                if not chunk:
                    break
                left -= len(chunk)
        raise RequestRefused(413, f"request body of {size} bytes is over this server's limit of {limit} bytes")

    def _run(self, request: RunRequest) -> dict:
        with self.server.slots:
            try:  # python named: run here even where this process is configured to use a service
                result = run_python(request.code, stdin=request.stdin, limits=request.limits,
                                    python=self.server.config.python)
            except Exception as exc:  # the sandbox itself failed (no interpreter, no disk): not the program's doing
                log.exception("sandbox failed to run a program")
                return error_response(f"the sandbox could not run the program: {exc}")
        return run_response(result, request.limits, layers_for(request.limits, self.server.config.python))

    def _reply(self, status: int, payload: dict, language: str, size: int, started: float) -> None:
        body = json.dumps(payload, default=str).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        log.info("%s %s language=%s bytes=%d http=%d status=%s seconds=%.3f", self.command, self.path, language,
                 size, status, payload.get("status"), time.monotonic() - started)

    def log_request(self, code="-", size="-") -> None:
        """Silenced: ``_reply`` logs one line per request, with what it ran."""

    def log_error(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
        """Errors http.server finds itself (a bad request line), to our log instead of stderr."""
        log.warning("%s: " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung client never keeps the process alive
    request_queue_size = 128  # bursts from many reward actors queue in the kernel, not drop

    def __init__(self, address: tuple[str, int], config: ServiceConfig) -> None:
        # first, before the port is taken: it probes the sandbox once and raises where it cannot run
        self.layers = layers_for(config.ceiling, config.python)
        self.config = config
        self.slots = threading.BoundedSemaphore(config.max_parallel)
        super().__init__(address, _Handler)


class SandboxServer:
    """A running sandbox service (see :func:`serve`); ``close()`` stops it."""

    def __init__(self, http_server: _Server) -> None:
        self._http = http_server
        self._thread = threading.Thread(target=http_server.serve_forever, name="sandbox-service", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The base URL clients use, e.g. ``http://127.0.0.1:8080``."""
        host, port = self._http.server_address[:2]
        if host in ("0.0.0.0", ""):  # listening everywhere: name the machine others reach it by
            host = socket.gethostname()
        return f"http://{host}:{port}"

    @property
    def layers(self) -> list[str]:
        """The isolation layers a run gets under the server's ceiling."""
        return self._http.layers

    @property
    def config(self) -> ServiceConfig:
        """What the server allows."""
        return self._http.config

    def close(self) -> None:
        """Stop accepting requests and free the port (runs under way finish in their threads)."""
        self._http.shutdown()
        self._http.server_close()
        self._thread.join()

    def __enter__(self) -> SandboxServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve(host: str = "127.0.0.1", port: int = 0, *, max_parallel: int | None = None,
          limits: SandboxLimits | None = None, max_body_bytes: int = 4 * 2**20,
          python: str = sys.executable) -> SandboxServer:
    """Start the service in a background thread and return it (port 0: any free port; see ``.url``).

    ``limits`` is the ceiling every run gets at most (default: ``SandboxLimits()``);
    ``max_parallel`` the runs at once (default: the CPU count).
    """
    config = ServiceConfig(ceiling=limits or SandboxLimits(), max_body_bytes=max_body_bytes, python=python,
                           **({"max_parallel": max_parallel} if max_parallel else {}))
    server = SandboxServer(_Server((host, port), config))
    log.info("sandbox service on %s, %d runs at once, layers %s", server.url, config.max_parallel,
             ", ".join(server.layers))
    return server
