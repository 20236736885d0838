"""The agent's HTTP endpoint against hostile clients, on a fake agent (the real one is in
tests/reliability): every malformed request gets a 4xx, a client that leaves costs one log line."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from mace_agent.node import server
from mace_agent.node.server import AgentHTTPServer

DEADLINE_S = 1.0


class FakeAgent:
    """What the handler reads from the agent; ``/healthz`` takes ``delay`` seconds to answer."""

    def __init__(self) -> None:
        self.reviewer = None
        self.delay = 0.0
        self.controller = SimpleNamespace(synced=threading.Event())

    def health_problems(self) -> list[str]:
        time.sleep(self.delay)
        return []


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[tuple[str, int], FakeAgent]]:
    monkeypatch.setattr(server, "REQUEST_DEADLINE_S", DEADLINE_S)
    agent = FakeAgent()
    httpd = AgentHTTPServer(("127.0.0.1", 0), agent)  # type: ignore[arg-type]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[:2], agent
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def exchange(address: tuple[str, int], data: bytes, half_close: bool = True, timeout: float = 5.0) -> bytes:
    """Send ``data``, optionally end the sending side, and read the whole answer."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/"), answer[:200]
    return int(answer.split(b" ", 2)[1])


def post(body: bytes, length: str | None = None) -> bytes:
    header = f"Content-Length: {len(body) if length is None else length}\r\n"
    return b"POST /resolve HTTP/1.1\r\nHost: x\r\n" + header.encode() + b"\r\n" + body


@pytest.mark.parametrize(("what", "request_bytes", "expected"), [
    ("deep nesting", post(b"[" * 30_000), 400),
    ("deep nesting in an object", post(b'{"containerIDs": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"), 400),
    ("bad UTF-8", post(b'{"podIP": "\xff\xfe"}'), 400),
    ("not JSON", post(b"{containerIDs"), 400),
    ("huge", post(b"", length=str(100 << 20)), 413),
    ("truncated", post(b'{"containerIDs": ["a"]', length="400"), 400),
    ("Content-Length not a number", post(b"{}", length="abc"), 400),
    ("negative Content-Length", post(b"{}", length="-5"), 400),
    ("Content-Length shorter than the body", post(b'{"containerIDs": ["a"]}', length="5"), 400),
    ("no Content-Length", b"POST /resolve HTTP/1.1\r\nHost: x\r\n\r\n{}", 400),
    ("a device name Linux refuses", post(b'{"containerIDs": ["a"], "podIP": "1.2.3.4", "outerDevice": ".."}'),
     422),
    ("a huge number", post(b'{"containerIDs": [' + b"9" * 50_000 + b"]}"), 400),
])
def test_malformed_requests_get_a_4xx(endpoint: tuple[tuple[str, int], FakeAgent], what: str,
                                      request_bytes: bytes, expected: int,
                                      caplog: pytest.LogCaptureFixture) -> None:
    address, _ = endpoint
    assert status_of(exchange(address, request_bytes)) == expected, what
    assert status_of(exchange(address, b"GET /healthz HTTP/1.0\r\n\r\n")) == 200
    assert not [r for r in caplog.records if r.exc_info], "no traceback for a client's mistake"


def test_a_body_that_stalls_gets_408_at_the_deadline(endpoint: tuple[tuple[str, int], FakeAgent]) -> None:
    address, _ = endpoint
    began = time.monotonic()
    answer = exchange(address, post(b'{"containerIDs"', length="400"), half_close=False)
    assert status_of(answer) == 408
    assert DEADLINE_S * 0.9 <= time.monotonic() - began < DEADLINE_S + 3


def test_slow_headers_are_cut_off_and_block_nobody(endpoint: tuple[tuple[str, int], FakeAgent]) -> None:
    """One byte every 0.1 s keeps each read under the read timeout; the deadline still ends it."""
    address, _ = endpoint
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    began = time.monotonic()
    with socket.create_connection(address, timeout=5) as slow:
        answer = b""
        for byte in request:
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                break
            code = status_of(exchange(address, b"GET /healthz HTTP/1.0\r\n\r\n", timeout=2.0))
            assert code == 200, "another client is served while the slow one trickles"
            if time.monotonic() - began > DEADLINE_S + 3:
                break
            time.sleep(0.1)
        slow.settimeout(5)
        while chunk := slow.recv(65536):
            answer += chunk
    assert status_of(answer) == 408
    assert time.monotonic() - began < DEADLINE_S + 4


def test_a_client_that_leaves_early_is_one_log_line(endpoint: tuple[tuple[str, int], FakeAgent],
                                                    caplog: pytest.LogCaptureFixture,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    address, agent = endpoint
    agent.delay = 0.3  # the reset arrives before the answer is written
    caplog.set_level(logging.INFO, logger="mace_agent.node.server")
    for _ in range(3):
        sock = socket.create_connection(address, timeout=5)
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST
    agent.delay = 0.0

    def lines() -> list[Any]:
        return [r for r in caplog.records if "ended early" in r.getMessage()]

    deadline = time.monotonic() + 5
    while len(lines()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(lines()) == 3
    assert all(r.exc_info is None for r in lines())
    assert "Traceback" not in capfd.readouterr().err
