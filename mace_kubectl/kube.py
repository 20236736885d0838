"""The plugin's only way into the cluster: the Kubernetes API server, with the user's kubeconfig.

Probes and pods are read and written as API objects; an agent's ``/metrics`` and ``/events`` are reached
through the API server's ``pods/proxy`` subresource of the agent pod on the probe's node. Every API
failure becomes a :class:`PluginError` whose message says what was refused and which permission is missing.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from mace.probe import GROUP, PLURAL, VERSION

AGENT_SELECTOR = "app.kubernetes.io/name=mace-agent,app.kubernetes.io/component=agent"
"""The labels every Mace agent pod carries (the chart sets them; the operator finds agents by them)."""
AGENT_PORT = 9464
RBAC_DOC = "docs/kubectl-mace.md#permissions"
REQUEST_TIMEOUT_S = 15.0
MAX_LINE_BYTES = 1 << 20
"""An /events line is a few hundred bytes; a longer one is refused rather than buffered."""

T = TypeVar("T")


class PluginError(Exception):
    """A failure the user can act on: printed as one message, exit status 1."""


class Forbidden(PluginError):
    """The API server refused the user (401 or 403)."""


@dataclass(frozen=True)
class Agent:
    """The agent pod that measures a node's probes."""

    namespace: str
    name: str
    port: int


def _refuse(error: ApiException, verb: str, resource: str, namespace: str | None) -> NoReturn:
    where = f" in namespace {namespace}" if namespace else " cluster-wide"
    if error.status == 403:
        raise Forbidden(f"forbidden: you may not {verb} {resource}{where}. kubectl mace needs the "
                          f"permissions listed in {RBAC_DOC}; ask your cluster admin for them.") from None
    if error.status == 401:
        raise Forbidden("unauthorized: the API server refused the kubeconfig's credentials "
                          "(expired token or certificate?)") from None
    reason = error.reason or "error"
    with contextlib.suppress(ValueError, AttributeError):
        reason = json.loads(error.body or "{}").get("message") or reason
    raise PluginError(f"cannot {verb} {resource}{where}: {reason} (HTTP {error.status})") from None


class Kube:
    """API access with the user's kubeconfig (``--kubeconfig``, else $KUBECONFIG or ~/.kube/config,
    else in-cluster)."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        configuration = client.Configuration()
        try:
            config.load_kube_config(config_file=kubeconfig, context=context,  # type: ignore[no-untyped-call]
                                    client_configuration=configuration)
        except (ConfigException, OSError) as error:
            if kubeconfig or context:
                raise PluginError(f"cannot load the kubeconfig: {error}") from None
            try:
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            except ConfigException:
                raise PluginError(f"no kubeconfig found ({error}); pass --kubeconfig or set KUBECONFIG"
                                  ) from None
        configuration.retries = 1
        self.host = configuration.host
        self.api: Any = client.ApiClient(configuration)
        self.core: Any = client.CoreV1Api(self.api)
        self.custom: Any = client.CustomObjectsApi(self.api)
        try:
            self.default_namespace = str(config.list_kube_config_contexts(kubeconfig)[1]  # type: ignore[no-untyped-call]
                                         ["context"].get("namespace") or "default")
        except (ConfigException, OSError, KeyError, TypeError):
            self.default_namespace = "default"

    def _call(self, verb: str, resource: str, namespace: str | None, call: Callable[[], T]) -> T:
        try:
            return call()
        except ApiException as error:
            _refuse(error, verb, resource, namespace)
        except urllib3.exceptions.HTTPError as error:
            raise PluginError(f"cannot reach the API server at {self.host}: {error}") from None

    # -- probes and pods ------------------------------------------------------------------------

    def probe(self, namespace: str, name: str) -> dict[str, Any]:
        """The LatencyProbe object; a clear error if there is none."""
        try:
            found: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT_S)
            return found
        except ApiException as error:
            if error.status == 404:
                raise PluginError(f'latencyprobe "{name}" not found in namespace {namespace}') from None
            _refuse(error, "get", "latencyprobes.mace.dev", namespace)
        except urllib3.exceptions.HTTPError as error:
            raise PluginError(f"cannot reach the API server at {self.host}: {error}") from None

    def probes(self, namespace: str | None) -> list[dict[str, Any]]:
        """Every probe of ``namespace`` (all namespaces if None)."""
        if namespace is None:
            listed = self._call("list", "latencyprobes.mace.dev", None, lambda: self.custom
                                .list_cluster_custom_object(GROUP, VERSION, PLURAL,
                                                            _request_timeout=REQUEST_TIMEOUT_S))
        else:
            listed = self._call("list", "latencyprobes.mace.dev", namespace, lambda: self.custom
                                .list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                               _request_timeout=REQUEST_TIMEOUT_S))
        items: list[dict[str, Any]] = listed.get("items") or []
        return items

    def create_probe(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self._call(
            "create", "latencyprobes.mace.dev", namespace,
            lambda: self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body,
                                                                _request_timeout=REQUEST_TIMEOUT_S))
        return created

    def delete_probe(self, namespace: str, name: str) -> bool:
        """Delete the probe; False if there was none."""
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                        _request_timeout=REQUEST_TIMEOUT_S)
            return True
        except ApiException as error:
            if error.status == 404:
                return False
            _refuse(error, "delete", "latencyprobes.mace.dev", namespace)
        except urllib3.exceptions.HTTPError as error:
            raise PluginError(f"cannot reach the API server at {self.host}: {error}") from None

    def probe_exists(self, namespace: str, name: str) -> bool:
        try:
            self.probe(namespace, name)
        except PluginError as error:
            if "not found" in str(error):
                return False
            raise
        return True

    def pod(self, namespace: str, name: str) -> Any:
        """The Pod object; a clear error if there is none."""
        try:
            return self.core.read_namespaced_pod(name, namespace, _request_timeout=REQUEST_TIMEOUT_S)
        except ApiException as error:
            if error.status == 404:
                raise PluginError(f'pod "{name}" not found in namespace {namespace}') from None
            _refuse(error, "get", "pods", namespace)
        except urllib3.exceptions.HTTPError as error:
            raise PluginError(f"cannot reach the API server at {self.host}: {error}") from None

    # -- the agent, through pods/proxy ------------------------------------------------------------

    def agent(self, namespace: str, node: str) -> Agent:
        """The Running agent pod on ``node`` in the agents' namespace."""
        pods = self._call("list", "pods", namespace, lambda: self.core.list_namespaced_pod(
            namespace, label_selector=AGENT_SELECTOR, field_selector=f"spec.nodeName={node}",
            _request_timeout=REQUEST_TIMEOUT_S)).items
        running = [p for p in pods if p.status and p.status.phase == "Running"]
        if not running:
            raise PluginError(f"no running Mace agent on node {node} in namespace {namespace} "
                              "(pass --agent-namespace if Mace is installed elsewhere)")
        pod = running[0]
        port = next((p.container_port for c in pod.spec.containers for p in (c.ports or [])
                     if p.name == "http"), AGENT_PORT)
        return Agent(namespace, pod.metadata.name, int(port))

    def _proxy(self, agent: Agent, path: str, query: list[tuple[str, str]],
               timeout: float | tuple[float, float | None]) -> Any:
        """GET through the API server's pods/proxy; the urllib3 response, its body not read yet."""
        resource = f"/api/v1/namespaces/{agent.namespace}/pods/{agent.name}:{agent.port}/proxy{path}"

        def get() -> Any:
            method, url, headers, _, _ = self.api.param_serialize(
                "GET", resource, query_params=query, auth_settings=["BearerToken"])
            response = self.api.call_api(method, url, header_params=headers, _request_timeout=timeout)
            if response.status >= 400:
                error = ApiException(status=response.status, reason=response.reason)
                error.body = response.read()
                raise error
            return response.response

        return self._call("get", "pods/proxy", agent.namespace, get)

    def agent_get(self, agent: Agent, path: str) -> str:
        """GET ``path`` of the agent's endpoint; its body."""
        response = self._proxy(agent, path, [], REQUEST_TIMEOUT_S)
        try:
            return str(response.read().decode())
        finally:
            response.release_conn()

    def agent_lines(self, agent: Agent, path: str, query: list[tuple[str, str]]) -> Iterator[str]:
        """The lines of a streamed response (``/events``), as they arrive."""
        response = self._proxy(agent, path, query, (REQUEST_TIMEOUT_S, None))
        pending = b""
        try:
            for chunk in response.stream(4096, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                if len(pending) > MAX_LINE_BYTES:
                    raise PluginError(f"the agent sent a line of more than {MAX_LINE_BYTES} bytes")
                for line in lines:
                    if line.strip():
                        yield line.decode()
        except urllib3.exceptions.HTTPError as error:
            raise PluginError(f"the event stream broke: {error}") from None
        finally:
            response.release_conn()
