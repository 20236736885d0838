"""The real API server applies the generated CRD schema: it accepts exactly the flow specs the models
accept, and names the rule a refused one breaks."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from harness_client import REPO, Cluster
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from operator_helpers import dry_run_refusal
from pydantic import ValidationError

from mace.fields import Field
from mace.models import FlowSpec
from mace.probe import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.cluster


def test_example_is_accepted(cluster: Cluster, namespace: str) -> None:
    example = yaml.safe_load((REPO / "examples" / "latencyprobe.yaml").read_text())
    created = cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, example,
                                                             dry_run="All")
    assert created["spec"]["maxEventsPerSecond"] == 1000


@pytest.mark.parametrize(("corr", "info", "says"), [
    (["icmp_id", "icmp_sq"], [], 'Unsupported value: \\"icmp_sq\\"'),
    (["icmp_id"], [], "corr needs a per-packet field"),
    (["eth_src_addr", "icmp_seq"], [], "corr may not hold eth_src_addr"),
    (["icmp_seq", "icmp_seq"], [], "Duplicate value"),
    (["icmp_seq"], ["udp_src_port"], "different transport protocols"),
    (["icmp_seq"], ["ip6_src_addr"], "different IP families"),
    (["ip6_src_addr", "ip6_dst_addr", "udp_payload", "udp_src_port"], [], "more than 40 bytes"),
    ([], [], "should have at least 1 items"),
    (["icmp_seq"], ["eth_src_addr", "eth_dst_addr", "eth_proto", "ip_src_addr", "ip_dst_addr", "ip_id",
                    "icmp_id"], "must have at most 6 items"),
])
def test_server_names_the_broken_rule(cluster: Cluster, namespace: str, corr: list[str], info: list[str],
                                      says: str) -> None:
    message = dry_run_refusal(cluster, namespace, {"corr": corr, "info": info})
    assert message is not None and says in message


def model_accepts(flow: dict[str, Any]) -> bool:
    try:
        FlowSpec.model_validate(flow)
    except ValidationError:
        return False
    return True


names = st.sampled_from([f.value for f in Field])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(corr=st.lists(names, min_size=1, max_size=5, unique=True),
       info=st.lists(names, max_size=4, unique=True))
def test_server_and_model_agree(cluster: Cluster, namespace: str, corr: list[str], info: list[str]) -> None:
    flow = {"corr": corr, "info": info}
    assert (dry_run_refusal(cluster, namespace, flow) is None) == model_accepts(flow), flow
