"""The real agent's endpoint against hostile HTTP clients (issue 12, defect 3): malformed bodies get a
4xx, clients that leave early cost one log line, and half-open or trickling clients never keep
``/healthz`` or ``/metrics`` (what the chart's probes read, with a 3-5 s timeout) from answering."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from harness_client import Cluster, wait_for

pytestmark = pytest.mark.cluster

HALF_OPEN = 20
"""Connections that send nothing (the agent serves at most 64 at once)."""
TRICKLING = 5
"""Clients that send their headers one byte per second."""
PROBE_TIMEOUT_S = 3.0
"""The chart's readiness/liveness probes give up after 3-5 s."""
REQUEST_DEADLINE_S = 10.0
"""The agent's bound on receiving a whole request."""


def address(cluster: Cluster) -> tuple[str, int]:
    url = urlsplit(cluster.agent_url)
    assert url.hostname is not None and url.port is not None
    return url.hostname, url.port


def agent_log(cluster: Cluster) -> Path:
    return Path(cluster.env["KUBECONFIG"]).parent / "logs" / "pods" / "mace-system_mace-agent-harness.log"


def exchange(where: tuple[str, int], data: bytes, timeout: float = 15.0) -> bytes:
    with socket.create_connection(where, timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/"), answer[:200]
    return int(answer.split(b" ", 2)[1])


def resolve_request(cluster: Cluster, body: bytes, length: int | None = None) -> bytes:
    token = Path(cluster.env["MACE_OPERATOR_TOKEN_FILE"]).read_text().strip()
    return (f"POST /resolve HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body) if length is None else length}\r\n"
            "\r\n").encode() + body


@pytest.mark.parametrize(("what", "body", "length", "expected"), [
    ("30,000 nested [", b"[" * 30_000, None, 400),
    ("bad UTF-8", b'{"containerIDs": ["\xff\xfe"], "podIP": "x"}', None, 400),
    ("truncated", b'{"containerIDs": ["a"', 300, 400),
    ("huge", b"", 50 << 20, 413),
    ("shorter Content-Length", b'{"containerIDs": ["a"], "podIP": "1.2.3.4"}', 4, 400),
    ("not an object", b"[1, 2]", None, 422),
    ("outerDevice ..", b'{"containerIDs": ["containerd://ab"], "podIP": "1.2.3.4", "outerDevice": ".."}',
     None, 422),
])
def test_malformed_resolve_bodies_get_a_4xx(cluster: Cluster, what: str, body: bytes, length: int | None,
                                            expected: int) -> None:
    log = agent_log(cluster)
    before = log.stat().st_size
    answer = exchange(address(cluster), resolve_request(cluster, body, length))
    assert status_of(answer) == expected, (what, answer[:300])
    assert cluster.get("/healthz")[0] == 200
    assert "Traceback" not in log.read_text(errors="replace")[before:]


def test_a_client_that_leaves_early_is_one_log_line(cluster: Cluster) -> None:
    log = agent_log(cluster)
    before = log.stat().st_size
    leaving = 5
    for _ in range(leaving):
        sock = socket.create_connection(address(cluster), timeout=5)
        sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset, before (or while) the agent writes its answer
    assert cluster.get("/healthz")[0] == 200

    def logged() -> str | None:
        text = log.read_text(errors="replace")[before:]
        return text if "ended early" in text or "Traceback" in text else None

    text = wait_for("the agent to log an early disconnect", logged, 10)
    print(f"{leaving} early disconnects: {text.count('ended early')} 'ended early' lines, "
          f"{text.count('Traceback')} tracebacks")
    assert "Traceback" not in text and "BrokenPipe" not in text.replace("(BrokenPipeError)", "")


def test_half_open_and_trickling_clients_do_not_block_health_or_metrics(cluster: Cluster) -> None:
    where = address(cluster)
    idle = [socket.create_connection(where, timeout=5) for _ in range(HALF_OPEN)]
    slow = [socket.create_connection(where, timeout=5) for _ in range(TRICKLING)]
    request = b"GET /metrics HTTP/1.1\r\nHost: agent\r\nX-Slow: " + b"a" * 40 + b"\r\n\r\n"
    began = time.monotonic()
    worst = {"/healthz": 0.0, "/metrics": 0.0}
    cut_off: dict[int, float] = {}
    try:
        sent = 0
        while time.monotonic() - began < REQUEST_DEADLINE_S + 4 and sent < len(request):
            for index, sock in enumerate(slow):
                if index in cut_off:
                    continue
                try:
                    sock.sendall(request[sent:sent + 1])
                except OSError:
                    cut_off[index] = time.monotonic() - began
            sent += 1
            for path in worst:
                start = time.monotonic()
                code, _ = cluster.get(path, timeout=PROBE_TIMEOUT_S)
                worst[path] = max(worst[path], time.monotonic() - start)
                assert code == 200, path
            time.sleep(max(0.0, began + sent - time.monotonic()))  # one byte per second
        for index, sock in enumerate(slow):
            sock.settimeout(5)
            try:
                answer = sock.recv(4096)
            except OSError:
                answer = b""
            cut_off.setdefault(index, time.monotonic() - began)
            assert answer == b"" or status_of(answer) == 408
    finally:
        for sock in idle + slow:
            sock.close()
    print(f"with {HALF_OPEN} half-open and {TRICKLING} one-byte-per-second clients: slowest /healthz "
          f"{worst['/healthz'] * 1e3:.0f} ms, /metrics {worst['/metrics'] * 1e3:.0f} ms; trickling clients "
          f"cut off after {min(cut_off.values()):.1f}-{max(cut_off.values()):.1f} s")
    assert max(cut_off.values()) < REQUEST_DEADLINE_S + 5
