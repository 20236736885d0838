"""The few Kubernetes API calls the reconciler makes (the sync client, run in worker threads)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from mace.probe import GROUP, PLURAL, VERSION

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class Kube:
    """Reads probes and pods and merge-patches the status subresource of probes."""

    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    @staticmethod
    def _body(response: Any) -> dict[str, Any]:
        data = json.loads(response.data)
        if not isinstance(data, dict):
            raise ValueError("the API server answered something other than an object")
        return data

    async def _get_or_none(self, read: Any, *args: Any) -> dict[str, Any] | None:
        """The object ``read(*args)`` returns, or None if the API server says it does not exist."""
        try:
            response = await asyncio.to_thread(read, *args, _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return self._body(response)

    async def get_probe(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The LatencyProbe, or None if it does not exist."""
        return await self._get_or_none(self.custom.get_namespaced_custom_object,
                                       GROUP, VERSION, namespace, PLURAL, name)

    async def list_probes(self, namespace: str) -> list[dict[str, Any]]:
        """Every probe of ``namespace``."""
        response = await asyncio.to_thread(self.custom.list_namespaced_custom_object, GROUP, VERSION,
                                           namespace, PLURAL, _preload_content=False)
        items = self._body(response).get("items") or []
        return [item for item in items if isinstance(item, dict)]

    async def remove_finalizer(self, namespace: str, name: str, finalizers: list[str],
                               finalizer: str) -> None:
        """Remove ``finalizer`` from the probe with a JSON patch that changes nothing else: it shrinks the
        object, so it succeeds where a patch that also writes annotations is refused as too large. A
        probe that is gone, or whose finalizers changed meanwhile, is left alone."""
        if finalizer not in finalizers:
            return
        path = f"/metadata/finalizers/{finalizers.index(finalizer)}"
        body = [{"op": "test", "path": path, "value": finalizer}, {"op": "remove", "path": path}]
        try:
            await asyncio.to_thread(self.custom.patch_namespaced_custom_object, GROUP, VERSION, namespace,
                                    PLURAL, name, body, _content_type=JSON_PATCH, _preload_content=False)
        except ApiException as error:
            if error.status not in (404, 409, 422):
                raise

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Pod, or None if it does not exist."""
        return await self._get_or_none(self.core.read_namespaced_pod, name, namespace)

    async def patch_probe_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """JSON-merge-patch ``status`` into the probe's status (keys set to None are removed)."""
        await asyncio.to_thread(
            self.custom.patch_namespaced_custom_object_status, GROUP, VERSION, namespace, PLURAL, name,
            {"status": status}, _content_type=MERGE_PATCH, _preload_content=False)


class ConfigError(Exception):
    """No usable cluster configuration (neither the given kubeconfig nor in-cluster)."""


def load_configuration(kubeconfig: str | None) -> client.Configuration:
    """Client configuration: ``kubeconfig`` if given, else in-cluster, else $KUBECONFIG or ~/.kube/config."""
    configuration = client.Configuration()
    try:
        if kubeconfig is None:
            try:
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
                return configuration
            except config.ConfigException:
                pass
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration)
    except Exception as error:  # the loader raises YAML, key, type and OS errors alike
        where = kubeconfig or "in-cluster, $KUBECONFIG or ~/.kube/config"
        detail = " ".join(str(error).split())
        raise ConfigError(f"cannot load a cluster configuration ({where}): {detail}") from None
    return configuration


def bearer_token(configuration: client.Configuration) -> str | None:
    """The bearer token a configuration authenticates with, if it uses one."""
    header = (configuration.get_api_key_with_prefix("BearerToken")
              or configuration.get_api_key_with_prefix("authorization"))
    if not header:
        return None
    scheme, _, token = str(header).partition(" ")
    return token if scheme.lower() == "bearer" and token else None


def connection_info(configuration: client.Configuration) -> kopf.ConnectionInfo:
    """The same credentials, in the form kopf logs in with."""
    token = bearer_token(configuration)
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme="Bearer" if token else None,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )
