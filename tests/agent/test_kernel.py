"""The engine on the live kernel: header discovery, tracepoint checks, every program variant
passing the verifier, a loopback measurement in a namespace of its own, and CLI exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mace_agent import kernel
from mace_agent.config import EngineConfig
from mace_agent.engine import Engine
from mace_agent.kernel import KernelFeatureError

from mace.grammar import parse

AGENT = [sys.executable, "-m", "mace_agent.cli"]
FILTERS = {
    "icmp": "in: corr: icmp_id icmp_seq info: icmp_seq ip_src_addr eth_src_addr "
            "out: corr: icmp_id icmp_seq info: icmp_seq ip_dst_addr",
    "icmp6": "in: corr: icmp6_id icmp6_seq info: ip6_src_addr out: corr: icmp6_seq info: ip6_flow_label",
    "udp": "in: corr: udp_src_port udp_payload info: udp_payload out: corr: udp_payload info: udp_dst_port",
    "tcp": "in: corr: tcp_seq info: tcp_ack out: corr: tcp_seq tcp_dst_port info: ip_id",
    "any": "in: corr: ip_id info: ip_proto out: corr: ip_id info: eth_proto",
}


@pytest.mark.parametrize("release", ["5.10.0-28-amd64", "4.19.0", "5.12.19"])
def test_kernels_before_5_13_are_refused_with_the_reason(release: str) -> None:
    with pytest.raises(KernelFeatureError, match=f"kernel {release} is too old: .* 5.13 or newer"):
        kernel.require_release(release)


@pytest.mark.parametrize("release", ["5.13.0", "6.1.0-18-cloud-amd64", "6.18.44-fc-v669", "not-a-version"])
def test_newer_or_unparsable_releases_pass(release: str) -> None:
    kernel.require_release(release)


def test_missing_tracepoint_is_a_kernel_feature_error() -> None:
    if not kernel.tracepoint_exists("net", "net_dev_xmit"):
        pytest.skip("tracefs is not mounted")
    with pytest.raises(KernelFeatureError, match="net:no_such_event"):
        kernel.require_tracepoints(["net:net_dev_xmit", "net:no_such_event"])


def test_configured_headers_must_be_a_kernel_tree(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(kernel.HEADERS_ENV, str(tmp_path))
    with pytest.raises(KernelFeatureError, match=r"kconfig\.h"):
        kernel.kernel_headers()


def test_debian_headers_are_merged_into_a_private_tree(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    if not kernel._debian_pairs():
        pytest.skip("no Debian linux-headers packages installed")
    monkeypatch.delenv(kernel.HEADERS_ENV, raising=False)
    monkeypatch.setenv(kernel.HEADERS_CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(kernel, "_has_host_headers", lambda: False)
    tree = kernel.kernel_headers()
    assert tree is not None and tree.parent == tmp_path
    assert (tree / "include/linux/kconfig.h").is_file()  # from -common
    assert (tree / "include/generated/autoconf.h").is_file()  # from -<arch>
    assert (tree / "arch/x86/include/generated").is_dir() or (tree / "arch/arm64/include/generated").is_dir()
    assert kernel.kernel_headers() == tree  # reused, not rebuilt


@pytest.mark.ebpf
@pytest.mark.parametrize("name", sorted(FILTERS))
def test_each_program_variant_loads_and_detaches(name: str) -> None:
    flt = parse(f"dev-id: 1 proc-id: {os.getpid()} {FILTERS[name]}")
    with Engine(flt, EngineConfig(map_entries=64)) as engine:
        assert engine.poll(0) == []
        snap = engine.snapshot()
        assert snap.directions["out"].count == 0
        assert engine.stop_reason() is None
    with pytest.raises(RuntimeError, match="not started"):
        engine.poll(0)


LOOPBACK_CHILD = textwrap.dedent("""
    import json, os, socket, struct, sys, time
    from mace.grammar import parse
    from mace_agent.config import EngineConfig
    from mace_agent.engine import Engine
    subprocess_lo = socket.if_nametoindex("lo")
    os.system("ip link set lo up")
    flt = parse(f"dev-id: {subprocess_lo} proc-id: {os.getpid()} "
                "in: corr: udp_payload info: udp_payload udp_dst_port "
                "out: corr: udp_payload info: udp_payload ip_dst_addr")
    count = int(sys.argv[1])
    events = []
    with Engine(flt, EngineConfig(map_entries=256)) as engine:
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", 0))
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for seq in range(1, count + 1):
            tx.sendto(struct.pack(">Q", seq), rx.getsockname())
            rx.recvfrom(64)
        deadline = time.monotonic() + 5
        while len(events) < 2 * count and time.monotonic() < deadline:
            events += [e.to_dict() for e in engine.poll(0.1)]
        summary = engine.snapshot().to_dict()
    print(json.dumps({"port": rx.getsockname()[1], "events": events, "summary": summary}))
""")


# Measures this process's TCP over loopback (argv: segments, "yes" or "no" for sock_recv_length,
# "again" to add and remove a probe first, so that the measured one follows the node's last, and
# "read" to read every other segment with read() instead of recv()).
TCP_CHILD = textwrap.dedent("""
    import json, os, socket, struct, sys
    from mace.grammar import parse
    from mace_agent.config import EngineConfig
    from mace_agent.engine import NodeEngine, ProbeSpec
    from mace_agent.hooks import KernelHooks
    os.system("ip link set lo up")
    flt = parse(f"dev-id: {socket.if_nametoindex('lo')} proc-id: {os.getpid()} "
                "in: corr: tcp_seq info: tcp_seq out: corr: tcp_seq info: tcp_seq")
    count, recv_length_hook = int(sys.argv[1]), sys.argv[2] == "yes"
    again, read_too = "again" in sys.argv[3:], "read" in sys.argv[3:]
    hooks = KernelHooks(sock_recv_length=recv_length_hook)
    with NodeEngine(EngineConfig(map_entries=256), hooks) as engine:
        if again:
            engine.remove(engine.add(ProbeSpec(flt)))
        probe = engine.add(ProbeSpec(flt))
        listener = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(listener.getsockname())
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server, _ = listener.accept()
        for seq in range(count):
            client.send(struct.pack(">Q", seq))
            data = os.read(server.fileno(), 8) if read_too and seq % 2 else server.recv(8)
            assert len(data) == 8, data
        summary = engine.snapshot(probe).to_dict()
    print(json.dumps(summary))
""")


def tcp_summary(namespace: str, count: int, recv_length_hook: bool, *options: str) -> Any:
    """The summary of TCP_CHILD run in ``namespace`` (``options``: "again", "read")."""
    command = ["ip", "netns", "exec", namespace, sys.executable, "-c", TCP_CHILD, str(count),
               "yes" if recv_length_hook else "no", *options]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.ebpf
@pytest.mark.parametrize("recv_length_hook", [True, False], ids=["sock_recv_length", "without"])
def test_tcp_read_by_any_call_where_the_kernel_shows_the_socket_layer_return(namespace: str,
                                                                              recv_length_hook: bool) -> None:
    """With sock_recv_length, data read by read() is measured like data read by recv(); a kernel
    without that tracepoint (simulated here) still measures what recv() reads."""
    count = 10
    summary = tcp_summary(namespace, count, recv_length_hook, "read")
    assert summary["out"]["count"] == count
    assert summary["in"]["count"] == (count if recv_length_hook else count // 2)


@pytest.mark.ebpf
@pytest.mark.parametrize("recv_length_hook", [True, False], ids=["sock_recv_length", "without"])
def test_a_probe_measures_after_the_nodes_last_probe_was_removed(namespace: str,
                                                                 recv_length_hook: bool) -> None:
    """What the engine clears when a node's last probe goes (its targets' ports and UDP sockets) must
    exist in every program variant, also on a kernel without sock_recv_length (simulated), whose
    program has no UDP notes; a later probe learns it again."""
    count = 10
    summary = tcp_summary(namespace, count, recv_length_hook, "again")
    assert summary["out"]["count"] == summary["in"]["count"] == count


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"mace-t{os.getpid()}-kernel"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.ebpf
def test_loopback_udp_is_measured_both_ways(namespace: str) -> None:
    count = 20
    command = ["ip", "netns", "exec", namespace, sys.executable, "-c", LOOPBACK_CHILD, str(count)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    by_direction: dict[str, list[dict[str, Any]]] = {"out": [], "in": []}
    for event in result["events"]:
        by_direction[event["direction"]].append(event)
    seqs = list(range(1, count + 1))
    assert [e["info"]["udp_payload"] for e in by_direction["out"]] == seqs
    assert all(e["info"]["ip_dst_addr"] == "127.0.0.1" for e in by_direction["out"])
    assert sorted(e["info"]["udp_payload"] for e in by_direction["in"]) == seqs
    assert all(e["info"]["udp_dst_port"] == result["port"] for e in by_direction["in"])
    for event in result["events"]:
        assert 0 < event["latency_ns"] < 1_000_000_000
    summary = result["summary"]
    assert summary["out"]["count"] == summary["in"]["count"] == count
    assert summary["percentiles"] == {"out": "exact", "in": "exact"}
    assert summary["dropped"] == 0


def _agent(*args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    command = list(AGENT) + list(args)
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_cli_invalid_filter_exits_2() -> None:
    done = _agent("run", "--filter", "dev-id: 1 proc-id: 1 in: corr: icmp_seq info: out: corr: nope info:")
    assert done.returncode == 2
    assert "invalid filter" in done.stderr and "nope" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", [
    ["run", "--filter", "dev-id: 1 proc-id: 1 in: corr: icmp_seq info: out: corr: icmp_seq info:"],
    ["serve", "--node", "node-1"],
])
@pytest.mark.parametrize(("ports", "message"), [("4789,vx", "not a comma-separated list of ports"),
                                              ("4789,70000", "VXLAN ports must be")])
def test_cli_bad_vxlan_ports_exit_2(command: list[str], ports: str, message: str) -> None:
    done = _agent(*command, "--vxlan-ports", ports)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.ebpf
def test_cli_missing_process_exits_2() -> None:
    done = _agent("run", "--filter",
                  "dev-id: 1 proc-id: 4194304 in: corr: icmp_seq info: out: corr: icmp_seq info:")
    assert done.returncode == 2
    assert "no process with PID 4194304" in done.stderr


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_cli_without_privileges_exits_3() -> None:
    done = _agent("run", "--filter", f"dev-id: 1 proc-id: {os.getpid()} in: corr: icmp_seq info: "
                  "out: corr: icmp_seq info:", user=65534)
    assert done.returncode == 3
    assert done.stderr.startswith("mace-agent: insufficient privileges")
    assert "Traceback" not in done.stderr


@pytest.mark.ebpf
def test_tracefs_is_mounted_over_a_bind_mounted_empty_directory(tmp_path: Path) -> None:
    """A node without tracefs gives the agent's host mount an empty directory: mount tracefs there."""
    empty = tmp_path / "empty"
    empty.mkdir()
    script = textwrap.dedent(f"""
        set -e
        mount --bind {empty} /sys/kernel/tracing
        {sys.executable} -c 'from mace_agent import kernel; kernel.ensure_tracing_mounts()'
        awk '$2 == "/sys/kernel/tracing" {{ print $3 }}' /proc/self/mounts | tail -n 1
        test -e /sys/kernel/tracing/events/net/net_dev_xmit
    """)
    # a private mount namespace: nothing outside this test sees the mounts
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["tracefs"]
