"""The agent's HTTP endpoint.

    GET  /healthz   200 while the control loop and the publisher run
    GET  /readyz    200 once the first list of LatencyProbes was applied
    GET  /metrics   Prometheus text (see :mod:`.metrics`)
    GET  /events    NDJSON stream of per-packet events; ?probe=NS/NAME, ?limit=N, ?timeout=SECONDS
    POST /resolve   the operator's lookup (bearer token checked with a TokenReview)

Everything but ``/resolve`` is read-only and reveals only what the probes' statuses already show. At most
``MAX_CONNECTIONS`` requests are served at once; request bodies are capped at ``MAX_BODY`` bytes. A request
must arrive whole (request line, headers, body) within ``REQUEST_DEADLINE_S``, however slowly its bytes
trickle in; a malformed one gets a 4xx, and a client that goes away early costs one log line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from queue import Empty
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from pydantic import ValidationError

from mace.probe import MAX_MESSAGE_CHARS
from mace.resolve import ResolveFailure, ResolveRequest
from mace_agent.node import metrics, resolver
from mace_agent.node.events import TooManySubscribers

if TYPE_CHECKING:
    from mace_agent.node.agent import Agent

log = logging.getLogger("mace_agent.node.server")

MAX_CONNECTIONS = 64
MAX_BODY = 64 * 1024
READ_TIMEOUT_S = 10.0
"""Longest wait for one read from a client."""
REQUEST_DEADLINE_S = 10.0
"""Longest time from accepting a connection to having its whole request (a slow client's bytes keep it
under ``READ_TIMEOUT_S`` per read, never longer than this in all)."""
MAX_STREAM_S = 24 * 3600.0
AT_CAPACITY = "AgentAtCapacity"
GET_PATHS = ("/healthz", "/readyz", "/metrics", "/events")


class AgentHTTPServer(ThreadingHTTPServer):
    """A threading server that refuses connections beyond ``MAX_CONNECTIONS`` instead of piling up threads."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], agent: Agent) -> None:
        self.agent = agent
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away or stalled is one line; anything else keeps its traceback."""
        error = sys.exception()
        if isinstance(error, OSError):
            log.info("client %s: connection ended early (%s)", client_address[0],
                     type(error).__name__)
        else:
            log.exception("serving %s failed", client_address[0])


class Handler(BaseHTTPRequestHandler):
    server: AgentHTTPServer
    server_version = "mace-agent"
    timeout = READ_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # -- the request deadline -------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self._deadline = time.monotonic() + REQUEST_DEADLINE_S
        self._expired = False
        self._reading = threading.Lock()
        self._timer = threading.Timer(REQUEST_DEADLINE_S, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        """The request did not arrive in time: end the reads (the reading thread then answers 408)."""
        with self._reading:
            if not self._timer.finished.is_set() and not self._expired:  # not cancelled meanwhile
                self._expired = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RD)

    def _request_read(self) -> bool:
        """Stop the deadline once the whole request is in; False (and a 408 sent) if it ran out."""
        with self._reading:
            self._timer.cancel()
            expired = self._expired
        if expired:
            self.close_connection = True
            self._error(408, "RequestTimeout",
                        f"the request did not arrive within {REQUEST_DEADLINE_S:.0f} s")
        return not expired

    def finish(self) -> None:
        self._timer.cancel()
        super().finish()

    def parse_request(self) -> bool:
        if self._expired:  # what arrived of the request line is not worth parsing
            self.command, self.request_version = "", "HTTP/1.0"
            self.requestline = str(getattr(self, "raw_requestline", b""), "iso-8859-1").rstrip("\r\n")
            return self._request_read()
        if not super().parse_request():
            return False
        return self.command == "POST" or self._request_read()

    # -- replies --------------------------------------------------------------------------------

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        self._reply(status, json.dumps(data).encode() + b"\n", "application/json")

    def _error(self, status: int, reason: str, message: str) -> None:
        self._json(status, ResolveFailure(reason=reason, message=message[:MAX_MESSAGE_CHARS])
                   .model_dump(mode="json"))

    # -- routing --------------------------------------------------------------------------------

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        agent = self.server.agent
        if url.path == "/healthz":
            problems = agent.health_problems()
            self._json(503 if problems else 200, {"ok": not problems, "problems": problems})
        elif url.path == "/readyz":
            ready = agent.controller.synced.is_set()
            self._json(200 if ready else 503, {"ready": ready})
        elif url.path == "/metrics":
            self._reply(200, metrics.render(agent.registry.active(), agent.health()).encode(),
                        metrics.CONTENT_TYPE)
        elif url.path == "/events":
            self._events(parse_qs(url.query))
        elif url.path == "/resolve":
            self._error(405, "MethodNotAllowed", "use POST /resolve")
        else:
            self._error(404, "NotFound", f"no such endpoint; try {', '.join(GET_PATHS)} or POST /resolve")

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path == "/resolve":
            self._resolve()
        elif path in GET_PATHS:
            self._error(405, "MethodNotAllowed", f"{path} is read-only (GET)")
        else:
            self._error(404, "NotFound", "no such endpoint")

    def _not_allowed(self) -> None:
        self._error(405, "MethodNotAllowed", "the agent's endpoint is read-only except POST /resolve")

    do_PUT = do_DELETE = do_PATCH = _not_allowed

    # -- /events --------------------------------------------------------------------------------

    def _events(self, query: dict[str, list[str]]) -> None:
        probe = (query.get("probe") or [""])[0] or None
        try:
            limit = int((query.get("limit") or ["0"])[0])
            duration = float((query.get("timeout") or [str(MAX_STREAM_S)])[0])
        except ValueError:
            self._error(400, "BadRequest", "limit must be an integer and timeout a number of seconds")
            return
        if limit < 0 or not 0 < duration <= MAX_STREAM_S:
            self._error(400, "BadRequest", f"limit must be >= 0 and timeout within (0, {MAX_STREAM_S:.0f}]")
            return
        if probe is not None and probe.count("/") != 1:
            self._error(400, "BadRequest", "probe must be NAMESPACE/NAME")
            return
        hub = self.server.agent.hub
        try:
            sub = hub.subscribe(probe)
        except TooManySubscribers as error:
            self._error(503, "TooManyStreams", str(error))
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.flush()
            self._stream(sub.lines, limit, time.monotonic() + duration)
        except OSError:
            pass  # the client went away
        finally:
            hub.unsubscribe(sub)

    def _client_gone(self) -> bool:
        poller = select.poll()  # not select.select(): the agent holds well over 1024 descriptors
        poller.register(self.connection, select.POLLIN)
        if not poller.poll(0):
            return False
        try:
            return bool(self.connection.recv(1, socket.MSG_PEEK) == b"")
        except OSError:
            return True

    def _stream(self, lines: Any, limit: int, deadline: float) -> None:
        sent = 0
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1.0)
            except Empty:
                if self._client_gone():
                    return
                continue
            self.wfile.write(json.dumps(line).encode() + b"\n")
            self.wfile.flush()
            sent += 1
            if limit and sent >= limit:
                return

    # -- /resolve -------------------------------------------------------------------------------

    def _resolve(self) -> None:
        agent = self.server.agent
        if agent.reviewer is not None:
            denied = agent.reviewer.check(self.headers.get("Authorization"))
            if denied is not None:
                reason = "Unauthorized" if denied.status == 401 else "Forbidden"
                self._error(denied.status, reason, denied.message)
                return
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            self.close_connection = True
            self._error(400 if length <= 0 else 413, "BadRequest",
                        f"send a JSON body of at most {MAX_BODY} bytes, with its Content-Length")
            return
        raw = self._read_body(length)
        if not self._request_read():
            return
        if len(raw) < length:
            self._error(400, "BadRequest", f"the body ended after {len(raw)} of {length} bytes")
            return
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            self._error(400, "BadRequest", "body is not JSON (UTF-8, nested at most a few hundred deep)")
            return
        try:
            request = ResolveRequest.model_validate(body)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "body"
            self._error(422, "BadRequest", f"{where}: {first['msg']}")
            return
        if not agent.registry.has_room(request.probe):
            self._error(409, AT_CAPACITY, f"the agent on node {agent.node} measures its limit of "
                                          f"{agent.registry.max_probes} probes (--max-probes, the chart's "
                                          "agent.maxProbes)")
            return
        try:
            answer = resolver.resolve(request.container_ids, request.pod_ip, request.outer_device)
        except resolver.ResolveError as error:
            self._error(error.status, error.reason, error.message)
            return
        except OSError as error:
            self._error(500, "InternalError", f"lookup failed: {error}")
            return
        self._json(200, answer.model_dump(mode="json", by_alias=True))

    def _read_body(self, length: int) -> bytes:
        """Up to ``length`` bytes of body: fewer if the client stops sending (or the deadline ends it)."""
        chunks: list[bytes] = []
        got = 0
        try:
            while got < length:
                chunk = self.rfile.read1(length - got)
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)
