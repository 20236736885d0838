"""``mace-agent serve``: the node agent (control loop, status publisher, HTTP endpoint).

``mace_agent.cli`` calls ``register(commands)`` to add the ``serve`` subparser and ``serve(args)`` to run it.

Exit codes: 0 stopped by SIGTERM/SIGINT; 2 bad options or kubeconfig; 1 the endpoint could not listen.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mace_agent import layout
from mace_agent.config import DEFAULT_MAX_PROBES, MAX_MAP_ENTRIES, add_vxlan_ports_option
from mace_agent.node.runs import RUN_ENGINE

if TYPE_CHECKING:  # imported when serving, so that `mace-agent run` does not pay for the client
    from kubernetes import client

EXIT_BAD_INPUT = 2
DEFAULT_PORT = 9464
DEFAULT_OPERATOR = "system:serviceaccount:mace-system:mace-operator"


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def _bounded(limit: int) -> Any:
    """An argparse type: an integer from 1 to ``limit``."""
    positive = _positive(int)

    def parse(text: str) -> int:
        value = int(positive(text))
        if value > limit:
            raise argparse.ArgumentTypeError(f"must be at most {limit}, got {text}")
        return value

    return parse


def register(commands: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to an ``add_subparsers()`` object; returns its parser."""
    serve_parser: argparse.ArgumentParser = commands.add_parser(
        "serve", help="run the node agent: measure the LatencyProbes resolved for this node",
        description="Run the node agent: reconcile the LatencyProbes resolved for this node, publish their "
                    "results, and serve /healthz /readyz /metrics /events and the operator's /resolve.")
    serve_parser.add_argument("--node", default=os.environ.get("NODE_NAME"),
                              help="this node's name (default: $NODE_NAME)")
    serve_parser.add_argument("--kubeconfig", help="kubeconfig (default: in-cluster, else $KUBECONFIG)")
    serve_parser.add_argument("--listen", type=_listen, default=("0.0.0.0", DEFAULT_PORT),
                              metavar="HOST:PORT",
                              help=f"address of the HTTP endpoint (default 0.0.0.0:{DEFAULT_PORT})")
    serve_parser.add_argument("--operator-username", action="append", default=[], metavar="USER",
                              help=f"who may call /resolve (repeatable; default {DEFAULT_OPERATOR})")
    serve_parser.add_argument("--insecure-no-auth", action="store_true",
                              help="let anybody call /resolve (local experiments only)")
    serve_parser.add_argument("--max-probes", type=_bounded(layout.MAX_PROBES), default=DEFAULT_MAX_PROBES,
                              help=f"most probes measured at once on this node (default "
                                   f"{DEFAULT_MAX_PROBES}, at most {layout.MAX_PROBES}): the slots of the "
                                   "engine's per-probe maps")
    serve_parser.add_argument("--map-entries", type=_bounded(MAX_MAP_ENTRIES), default=RUN_ENGINE.map_entries,
                              help="capacity of each pending-packet table, shared by every probe "
                                   f"(default {RUN_ENGINE.map_entries})")
    serve_parser.add_argument("--publish-interval", type=_positive(float), default=5.0, metavar="SECONDS",
                              help="how often a probe's changing counts are written to its status "
                                   "(default 5; state changes and first samples go out within 1 s)")
    add_vxlan_ports_option(serve_parser)
    serve_parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return serve_parser


def _api_client(kubeconfig: str | None) -> client.ApiClient:
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    if kubeconfig and not Path(kubeconfig).is_file():
        raise ConfigException(f"kubeconfig {kubeconfig}: no such file")
    if not kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return client.ApiClient(configuration)
    made: client.ApiClient = config.new_client_from_config(kubeconfig)  # type: ignore[no-untyped-call]
    return made


def serve(args: argparse.Namespace) -> int:
    """Run the agent until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.node:
        print("mace-agent serve: --node (or $NODE_NAME) is required", file=sys.stderr)
        return EXIT_BAD_INPUT
    from kubernetes.config.config_exception import ConfigException

    try:
        api, watch_api = _api_client(args.kubeconfig), _api_client(args.kubeconfig)
    except (ConfigException, OSError, ValueError) as error:
        print(f"mace-agent serve: cannot load the Kubernetes configuration: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from mace_agent.node.agent import Agent, AgentSettings  # after the cheap checks: it imports more

    users = () if args.insecure_no_auth else tuple(args.operator_username or [DEFAULT_OPERATOR])
    settings = AgentSettings(node=args.node, listen=args.listen, resolve_users=users,
                             max_probes=args.max_probes, map_entries=args.map_entries,
                             publish_interval=args.publish_interval, vxlan_ports=args.vxlan_ports)
    try:
        agent = Agent(settings, api, watch_api)
    except OSError as error:
        print(f"mace-agent serve: cannot listen on {args.listen[0]}:{args.listen[1]}: {error.strerror}",
              file=sys.stderr)
        return 1
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: agent.shutdown())
    agent.serve()
    return 0
