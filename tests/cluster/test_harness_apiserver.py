"""The harness's API server serves watches the way a real cluster's does.

``kubectl get latencyprobes -w``, the operator and the tests all open watches without a resourceVersion.
kube-apiserver serves them from its watch cache once the cache has caught up with etcd's newest revision;
when only other kinds of object changed since, it relies on etcd's watch-progress requests to learn that
revision. With an etcd that lacks working progress requests (Debian's 3.4.23, which the harness used at
first) every such watch failed after 3 s with ``504 Too large resource version``.
"""

from __future__ import annotations

from typing import Any

from harness_client import Cluster
from kubernetes import watch

from mace.probe import GROUP, PLURAL, VERSION


def test_probe_watch_is_served_after_other_objects_changed(cluster: Cluster, namespace: str) -> None:
    cluster.create_probe(namespace, "quiet", "no-such-pod")
    for round_ in range(5):
        for i in range(10):
            churn = {"metadata": {"name": f"churn-{round_}-{i}"}}
            cluster.core.create_namespaced_config_map(namespace, churn)
        stream: Any = watch.Watch()  # type: ignore[no-untyped-call]
        names = [event["object"]["metadata"]["name"]
                 for event in stream.stream(cluster.custom.list_namespaced_custom_object, GROUP, VERSION,
                                            namespace, PLURAL, timeout_seconds=1)]
        assert "quiet" in names, f"round {round_}: the watch did not list the probe first: {names}"
