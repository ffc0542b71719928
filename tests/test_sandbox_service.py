"""The sandbox service: real programs through a real server on loopback, SandboxFusion's protocol
answered as SandboxFusion does, the server's ceilings held, and the client's results the local ones."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from rlkit.sandbox import SandboxLimits, SandboxResult, run_python
from rlkit.sandbox_service import RemoteSandbox, SandboxServiceError, result_from_response, serve

MAX_BODY = 64 * 1024
CEILING = SandboxLimits(timeout_s=3.0, memory_mb=256)


@pytest.fixture(scope="module")
def server():
    with serve(max_parallel=2, limits=CEILING, max_body_bytes=MAX_BODY) as running:
        yield running


def post(url: str, body, path: str = "/run_code") -> tuple[int, dict]:
    """The HTTP status and JSON answer of one request (``body``: a dict to send as JSON, or raw bytes)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def plain(payload: dict) -> dict:
    """The answer as a SandboxFusion server would give it: without our extension."""
    return {key: value for key, value in payload.items() if key != "rlkit"}


def test_a_program_reads_stdin_and_its_output_comes_back(server):
    code = "import sys\nprint(sys.stdin.read().upper())"
    status, answer = post(server.url, {"code": code, "language": "python", "stdin": "hello"})
    assert status == 200
    assert answer["status"] == "Success" and answer["message"] == "" and answer["compile_result"] is None
    run = answer["run_result"]
    assert run["status"] == "Finished" and run["return_code"] == 0 and run["stdout"] == "HELLO\n"
    assert run["stderr"] == "" and 0 < run["execution_time"] < CEILING.timeout_s and answer["files"] == {}
    assert answer["rlkit"]["layers"] == server.layers and answer["rlkit"]["reason"] == ""

    # the client, given a SandboxFusion-style URL too, returns what a local run returns
    remote = RemoteSandbox(server.url + "/run_code").run_python(code, stdin="hello", limits=CEILING)
    local = run_python(code, stdin="hello", limits=CEILING)
    assert isinstance(remote, SandboxResult)
    for name in ("ok", "exit_code", "stdout", "stderr", "reason", "violation"):
        assert getattr(remote, name) == getattr(local, name), name
    assert result_from_response(plain(answer), CEILING).ok
    assert post(server.url, {"code": "print(1)", "language": "python3"})[1]["status"] == "Success"


def test_a_failing_program_is_failed_with_its_return_code_and_stderr(server):
    code = "import sys\nprint('bad input', file=sys.stderr)\nsys.exit(3)"
    status, answer = post(server.url, {"code": code, "language": "python"})
    assert status == 200 and answer["status"] == "Failed"
    run = answer["run_result"]
    assert run["status"] == "Finished" and run["return_code"] == 3 and "bad input" in run["stderr"]
    for result in (result_from_response(answer, CEILING), result_from_response(plain(answer), CEILING),
                   RemoteSandbox(server.url).run_python(code, limits=CEILING)):
        assert not result.ok and result.exit_code == 3 and not result.violation
        assert result.reason == "exit status 3: bad input"


def test_an_endless_loop_is_stopped_at_its_run_timeout(server):
    status, answer = post(server.url, {"code": "while True: pass", "language": "python", "run_timeout": 1})
    assert status == 200 and answer["status"] == "Failed"
    run = answer["run_result"]
    assert run["status"] == "TimeLimitExceeded" and run["return_code"] is None
    assert 1.0 <= run["execution_time"] < CEILING.timeout_s
    asked = SandboxLimits(timeout_s=1.0)
    for result in (result_from_response(answer, asked), result_from_response(plain(answer), asked)):
        assert not result.ok and result.violation and result.reason == "timeout after 1s"


@pytest.mark.parametrize("code", ["import socket\nsocket.create_connection(('127.0.0.1', 9))",
                                  "open('/tmp/rlkit-service-escape', 'w').write('x')"])
def test_network_and_writes_outside_the_work_dir_are_blocked_through_the_service(server, code):
    result = RemoteSandbox(server.url).run_python(code, limits=CEILING)
    assert not result.ok and result.violation and result.reason.startswith("blocked"), result
    assert not os.path.exists("/tmp/rlkit-service-escape")


def test_an_unsupported_language_or_files_are_a_sandbox_error_naming_them(server):
    status, answer = post(server.url, {"code": "int main() {}", "language": "cpp"})
    assert status == 200 and answer["status"] == "SandboxError" and answer["run_result"] is None
    assert "'cpp'" in answer["message"]
    status, answer = post(server.url, {"code": "print(1)", "language": "python", "files": {"a.txt": "eA=="}})
    assert status == 200 and answer["status"] == "SandboxError"
    assert "files are not supported by this server" in answer["message"]


@pytest.mark.parametrize("body, named", [
    (b'{"code": "print(1)", ', "not valid JSON"),
    ({"language": "python"}, "missing field 'code'"),
    ({"code": 7, "language": "python"}, "field 'code' must be a string"),
    ({"code": "print(1)"}, "missing field 'language'"),
    ({"code": "print(1)", "language": "python", "run_timeout": "ten"}, "field 'run_timeout' must be a number"),
    ({"code": "print(1)", "language": "python", "run_timeout": -1}, "field 'run_timeout' must be a positive"),
    ({"code": "print(1)", "language": "python", "memory_limit_MB": 8}, "memory_limit_MB"),
    ([1, 2], "must be a JSON object"),
])
def test_a_malformed_request_gets_400_naming_the_problem(server, body, named):
    status, answer = post(server.url, body)
    assert status == 400 and answer["status"] == "SandboxError" and named in answer["message"]


def test_an_oversize_body_is_refused_with_413(server):
    big = "x = 1\n" * (MAX_BODY // 6 + 10)
    status, answer = post(server.url, {"code": big, "language": "python"})
    assert status == 413 and f"limit of {MAX_BODY} bytes" in answer["message"]
    with pytest.raises(SandboxServiceError, match="HTTP 413"):
        RemoteSandbox(server.url).run_python(big)
    assert post(server.url, {"code": "print(1)", "language": "python"})[1]["status"] == "Success"  # still serving


def test_a_request_cannot_raise_the_servers_ceilings():
    with serve(limits=SandboxLimits(timeout_s=1.0, memory_mb=128)) as capped:
        request = {"code": "while True: pass", "language": "python", "run_timeout": 60, "memory_limit_MB": 4096}
        answer = post(capped.url, request)[1]
        assert answer["run_result"]["status"] == "TimeLimitExceeded"
        assert answer["run_result"]["execution_time"] < 10  # not the 60 s asked for
        assert answer["rlkit"]["limits"]["timeout_s"] == 1.0 and answer["rlkit"]["limits"]["memory_mb"] == 128
        # 200 MB fits the 4096 MB asked for, not the 128 MB ceiling
        result = RemoteSandbox(capped.url).run_python("block = bytearray(200 * 2**20)",
                                                      limits=SandboxLimits(timeout_s=30, memory_mb=4096))
        assert not result.ok and result.violation and result.reason == "memory limit", result
        lower = post(capped.url, {**request, "code": "pass", "run_timeout": 0.5, "memory_limit_MB": 100})[1]
        assert lower["rlkit"]["limits"]["timeout_s"] == 0.5 and lower["rlkit"]["limits"]["memory_mb"] == 100


def test_concurrent_requests_all_come_back_right_and_wait_their_turn(server):
    code = "import sys, time\ntime.sleep(0.2)\nprint(int(sys.stdin.read()) * 2)"
    client = RemoteSandbox(server.url)
    results: dict[int, SandboxResult] = {}

    def one(number: int) -> None:
        results[number] = client.run_python(code, stdin=str(number), limits=CEILING)

    started = time.monotonic()
    threads = [threading.Thread(target=one, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    elapsed = time.monotonic() - started
    assert sorted(results) == list(range(8))
    assert all(results[n].ok and results[n].stdout == f"{2 * n}\n" for n in range(8)), results
    assert elapsed >= 4 * 0.2  # 8 runs of 0.2 s, 2 at a time (max_parallel)


def test_the_client_names_the_url_when_nothing_listens():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(SandboxServiceError) as raised:
        RemoteSandbox(url, tries=2, backoff_s=0.05).run_python("print(1)")
    assert str(raised.value).startswith(f"sandbox service {url}: ") and "refused" in str(raised.value)


def test_health_answers_with_the_layers(server):
    health = RemoteSandbox(server.url).health()
    assert health == {"status": "ok", "layers": server.layers} and "rlimits" in health["layers"]
    request = urllib.request.Request(server.url + "/nowhere")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=10)
    assert raised.value.code == 404


@pytest.mark.timeout(120)
def test_the_cli_serves_until_interrupted():
    command = [sys.executable, "-m", "rlkit.cli", "sandbox-serve", "--port", "0", "--max-parallel", "1",
               "--timeout-s", "2"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:\d+", first)
        assert found, first + proc.stderr.read()
        assert "layers:" in proc.stdout.readline()
        result = RemoteSandbox(found.group(0)).run_python("print(6 * 7)")
        assert result.ok and result.stdout == "42\n"
        proc.send_signal(signal.SIGINT)
        out, errors = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "stopped" in out
    assert "POST /run_code language=python" in errors and "status=Success" in errors  # the request's log line
