"""Finding the Mace agent of a node, and asking it to resolve a pod (``POST /resolve``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import ValidationError

from mace.probe import Reason
from mace.resolve import Resolution, ResolveFailure, ResolveRequest

AGENT_LABELS = {"app.kubernetes.io/name": "mace-agent", "app.kubernetes.io/component": "agent"}
"""Labels that mark a Pod as a Mace agent."""

DEFAULT_PORT = 9464
PORT_NAME = "http"
SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
MAX_RESPONSE_BYTES = 1 << 20
MAX_TOKEN_BYTES = 64 << 10
RESOLVE_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, order=True)
class AgentEndpoint:
    """Where the agent of ``node`` listens (the agent uses host networking: host = the node's IP)."""

    node: str
    name: str
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def is_agent(pod: Mapping[str, Any]) -> bool:
    """Whether the Pod carries the agent labels."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return all(labels.get(key) == value for key, value in AGENT_LABELS.items())


def _ready(status: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())


def _port(spec: Mapping[str, Any]) -> int:
    for container in spec.get("containers") or ():
        for port in container.get("ports") or ():
            if port.get("name") == PORT_NAME and isinstance(port.get("containerPort"), int):
                return int(port["containerPort"])
    return DEFAULT_PORT


def agent_endpoint(pod: Mapping[str, Any]) -> AgentEndpoint | None:
    """The endpoint of an agent Pod that is Running and Ready on a node, else None."""
    if not is_agent(pod):
        return None
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    node, host = spec.get("nodeName"), status.get("podIP")
    if metadata.get("deletionTimestamp") or status.get("phase") != "Running" or not _ready(status):
        return None
    if not node or not host:
        return None
    return AgentEndpoint(node=str(node), name=str(metadata.get("name", "")), host=str(host), port=_port(spec))


def select_agent(pods: Iterable[Mapping[str, Any]], node: str) -> AgentEndpoint | None:
    """The agent serving ``node`` among ``pods`` (the first by name if several are ready)."""
    endpoints = sorted(e for e in map(agent_endpoint, pods) if e is not None and e.node == node)
    return endpoints[0] if endpoints else None


class ResolveError(Exception):
    """The agent could not resolve the pod: ``reason`` is ResolveFailed (the agent said why)
    or AgentError (the agent could not be asked, or answered nonsense)."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class TokenSource:
    """The bearer token sent to agents: read from a file on every use (projected tokens rotate)."""

    def __init__(self, path: Path | None = None, token: str | None = None) -> None:
        self.path = path
        self.token = token

    def header(self) -> dict[str, str]:
        """The ``Authorization`` header, or none if there is no token."""
        token = self.token
        if self.path is not None:
            with self.path.open("rb") as handle:
                token = handle.read(MAX_TOKEN_BYTES).decode().strip()
        return {"Authorization": f"Bearer {token}"} if token else {}


class AgentClient:
    """HTTP client for agents' ``/resolve``."""

    def __init__(self, tokens: TokenSource, timeout: float = RESOLVE_TIMEOUT_SECONDS) -> None:
        self.tokens = tokens
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def resolve(self, agent: AgentEndpoint, container_ids: Iterable[str], pod_ip: str,
                      outer_device: str | None, probe: str | None = None) -> Resolution:
        """Ask ``agent`` for the PIDs, veth and outer device of a pod; raise :class:`ResolveError`."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        body = ResolveRequest(container_ids=tuple(container_ids), pod_ip=pod_ip, outer_device=outer_device,
                              probe=probe).model_dump(mode="json", by_alias=True)
        try:
            headers = self.tokens.header()
        except OSError as error:
            raise ResolveError(Reason.AgentError, f"cannot read the agent token: {error}") from None
        where = f"agent {agent.name} on {agent.node} ({agent.url})"
        try:
            async with self._session.post(f"{agent.url}/resolve", json=body, headers=headers) as response:
                raw = await response.content.read(MAX_RESPONSE_BYTES)
                status = response.status
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            raise ResolveError(Reason.AgentError, f"{where}: {type(error).__name__}: {error}") from None
        try:
            answer = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            answer = None
        if status == 200 and isinstance(answer, dict):
            try:
                return Resolution.model_validate(answer)
            except ValidationError as error:
                raise ResolveError(Reason.AgentError, f"{where} answered an invalid resolution: "
                                   f"{error.errors()[0]['msg']}") from None
        if status in (404, 409, 422) and isinstance(answer, dict):
            try:
                failure = ResolveFailure.model_validate(answer)
            except ValidationError:
                failure = ResolveFailure(reason="Unknown", message=raw[:200].decode(errors="replace"))
            if failure.reason == Reason.AgentAtCapacity.value:
                raise ResolveError(Reason.AgentAtCapacity, failure.message)
            raise ResolveError(Reason.ResolveFailed, f"{failure.reason}: {failure.message}".strip())
        text = raw[:200].decode(errors="replace").strip()
        raise ResolveError(Reason.AgentError, f"{where} answered HTTP {status}: {text}")
