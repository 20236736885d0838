"""``mace-operator``: run the LatencyProbe operator (kopf) against a cluster."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import kopf
import urllib3
from kubernetes import client

from mace_operator import metrics
from mace_operator.agents import SERVICE_ACCOUNT_TOKEN, AgentClient, TokenSource
from mace_operator.handlers import register, settings
from mace_operator.kube import ConfigError, Kube, connection_info, load_configuration
from mace_operator.reconcile import Reconciler


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mace-operator",
        description="Resolve LatencyProbes into Protocol Filters and hand them to the Mace agents.")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], metavar="NS",
                       help="watch this namespace (repeatable; glob patterns as kopf allows); list the "
                            "agents' namespace too: agents are found as Pods")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="watch all namespaces (the default)")
    parser.add_argument("--kubeconfig", metavar="PATH",
                        help="kubeconfig to use (default: in-cluster, else $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--agent-token-file", type=Path, metavar="PATH",
                        help="bearer token sent to agents' /resolve, read on every request (default: "
                             f"{SERVICE_ACCOUNT_TOKEN} if present, else none; the kubeconfig's "
                             "credentials are never sent to agents)")
    parser.add_argument("--peering", metavar="NAME",
                        help="coordinate with other operator replicas through this kopf peering object "
                             "(default: standalone)")
    parser.add_argument("--liveness", metavar="URL",
                        help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--metrics", metavar="ADDR",
                        help="serve Prometheus metrics (every probe's phase, mace_probe_phase) on "
                             "http://ADDR/metrics, e.g. 0.0.0.0:9465 (default: off)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    return parser


def _tokens(path: Path | None) -> TokenSource:
    if path is not None:
        return TokenSource(path=path)
    return TokenSource(path=SERVICE_ACCOUNT_TOKEN if SERVICE_ACCOUNT_TOKEN.exists() else None)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mace-operator`` console script."""
    args = _parser().parse_args(argv)
    if args.agent_token_file is not None and not args.agent_token_file.is_file():
        print(f"mace-operator: --agent-token-file {args.agent_token_file}: no such file", file=sys.stderr)
        return 2
    sock = None
    if args.metrics is not None:
        try:
            sock = metrics.listen(args.metrics)
        except (ValueError, OSError) as error:
            print(f"mace-operator: --metrics {args.metrics}: {error}", file=sys.stderr)
            return 2
    try:
        configuration = load_configuration(args.kubeconfig)
    except ConfigError as error:
        print(f"mace-operator: {error}", file=sys.stderr)
        return 2
    kopf.configure(verbose=args.verbose, quiet=args.quiet)
    if not args.verbose:
        # kopf logs every handled watch event, aiohttp every liveness request; the reconciler logs each
        # status change.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if not configuration.verify_ssl:
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        logging.getLogger(__name__).warning("TLS verification of the API server is off (kubeconfig)")

    registry = kopf.OperatorRegistry()

    @kopf.on.login(id="login", registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(load_configuration(args.kubeconfig))

    api = client.ApiClient(configuration)
    api.user_agent = "mace-operator"
    reconciler = Reconciler(Kube(api),
                            AgentClient(_tokens(args.agent_token_file)))
    register(registry, reconciler)
    if sock is not None:
        phases = metrics.ProbePhases()
        metrics.register(registry, phases, metrics.MetricsServer(sock, metrics.metrics_registry(phases)))
    try:
        kopf.run(
            registry=registry,
            settings=settings(kopf.OperatorSettings()),
            standalone=args.peering is None,
            peering_name=args.peering,
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=args.liveness,
        )
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
