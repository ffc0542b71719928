"""The client of a sandbox service: ``RemoteSandbox(url).run_python(code, stdin=..., limits=...)``.

It has the call shape of :func:`rlkit.sandbox.run_python` and returns the same
:class:`~rlkit.sandbox_types.SandboxResult`, from our server (``rlkit sandbox-serve``,
``rlkit/sandbox_service.py``, which also describes the protocol: SandboxFusion's ``POST /run_code``)
or from a SandboxFusion server. ``sandbox.url`` in a run's config sends every run there.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import signal
import time
import urllib.error
import urllib.request

from rlkit.sandbox_types import SandboxLimits, SandboxResult, signal_name


class SandboxServiceError(RuntimeError):
    """The service could not run a program: unreachable, a refused request, or a SandboxError answer."""


def result_from_response(payload: dict, limits: SandboxLimits) -> SandboxResult:
    """The :class:`SandboxResult` a ``/run_code`` answer stands for (``limits``: what was asked).

    With our ``rlkit`` extension it is rebuilt field by field; from a plain SandboxFusion server
    the reason and violation are derived as ``rlkit.sandbox`` words them. A SandboxError raises.
    """
    if not isinstance(payload, dict) or payload.get("status") not in ("Success", "Failed", "SandboxError"):
        raise SandboxServiceError(f"not a /run_code answer: {str(payload)[:200]}")
    run = payload.get("run_result")
    if payload["status"] == "SandboxError" or not isinstance(run, dict):
        raise SandboxServiceError(payload.get("message") or "the service did not run the program")
    names = {f.name for f in dataclasses.fields(SandboxResult)}
    values = {"stdout": run.get("stdout") or "", "stderr": run.get("stderr") or "",
              "duration_s": run.get("execution_time") or 0.0, "workdir": ""}
    extension = payload.get("rlkit")
    if isinstance(extension, dict):
        values.update({name: value for name, value in extension.items() if name in names})
    else:
        values.update(_derived(run, values["stderr"], limits))
    return SandboxResult(**{name: value for name, value in values.items() if name in names})


def _derived(run: dict, stderr: str, limits: SandboxLimits) -> dict:
    """ok, exit_code, reason and violation from SandboxFusion's own fields."""
    code = run.get("return_code")
    if run.get("status") == "TimeLimitExceeded":  # SandboxFusion kills it and reports no code
        reason, violation, code = f"timeout after {limits.timeout_s:g}s", True, -signal.SIGKILL
    elif run.get("status") != "Finished" or code is None:
        raise SandboxServiceError(f"run ended with status {run.get('status')!r} and no return code: {stderr[-200:]}")
    elif code == 0:
        reason, violation = "", False
    elif code < 0:
        reason, violation = f"killed by signal {-code}{signal_name(-code)}", True
    else:
        last = (stderr.strip().splitlines() or [""])[-1]
        if last.startswith("MemoryError"):
            reason, violation = "memory limit", True
        else:
            reason, violation = f"exit status {code}" + (f": {last[:200]}" if last else ""), False
    return {"ok": not reason, "exit_code": code, "reason": reason, "violation": violation}



# the connection failed before any answer: safe to try again (at worst the program runs twice)
_RETRYABLE = (ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError, http.client.RemoteDisconnected)


class RemoteSandbox:
    """A sandbox service (ours or SandboxFusion) behind the call shape of ``rlkit.sandbox.run_python``.

    ``timeout_s`` bounds one HTTP exchange, waiting in the server's queue included; connection
    failures are tried ``tries`` times in all, ``backoff_s`` apart, doubling.
    """

    def __init__(self, url: str, *, timeout_s: float = 120.0, tries: int = 3, backoff_s: float = 0.2) -> None:
        url = url.rstrip("/")
        self.url = url[: -len("/run_code")] if url.endswith("/run_code") else url  # SandboxFusion-style URLs too
        self.timeout_s = timeout_s
        self.tries = max(1, tries)
        self.backoff_s = backoff_s

    def run_python(self, code: str, *, stdin: str = "", limits: SandboxLimits | None = None) -> SandboxResult:
        """Run ``code`` on the service, as :func:`rlkit.sandbox.run_python` would here.

        Only ``limits.timeout_s`` and ``limits.memory_mb`` travel; the server may lower them,
        and its own settings give the other limits.
        """
        limits = limits or SandboxLimits()
        request = {"code": code, "language": "python", "stdin": stdin, "run_timeout": limits.timeout_s,
                   "memory_limit_MB": limits.memory_mb}
        payload = self._exchange("POST", "/run_code", request)
        try:
            return result_from_response(payload, limits)
        except SandboxServiceError as exc:
            raise SandboxServiceError(f"sandbox service {self.url}: {exc}") from None

    def health(self) -> dict:
        """The service's ``GET /health`` answer: ``{"status": "ok", "layers": [...]}``."""
        return self._exchange("GET", "/health", None)

    def _exchange(self, method: str, path: str, payload: dict | None) -> dict:
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        attempt = 1
        while True:
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:  # the service answered: no point asking again
                raise SandboxServiceError(f"sandbox service {self.url}: HTTP {exc.code}: {_message(exc)}") from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                if not isinstance(cause, _RETRYABLE) or attempt == self.tries:
                    raise SandboxServiceError(f"sandbox service {self.url}: {self._describe(cause)}"
                                              + (f" ({attempt} tries)" if attempt > 1 else "")) from exc
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
                attempt += 1
            except json.JSONDecodeError as exc:
                raise SandboxServiceError(f"sandbox service {self.url}: answer is not JSON: {exc}") from None

    def _describe(self, cause) -> str:
        if isinstance(cause, TimeoutError):  # socket.timeout is TimeoutError
            return f"no answer within {self.timeout_s:g}s"
        if isinstance(cause, BrokenPipeError):  # the server hangs up on bodies far over its limit
            return "the connection closed while the request was sent (a body over the server's size limit?)"
        text = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        return text[:1].lower() + text[1:]


def _message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
        return body.get("message") or str(body.get("detail"))  # ours, or FastAPI's (SandboxFusion)
    except (ValueError, AttributeError, OSError):
        return exc.reason or ""
