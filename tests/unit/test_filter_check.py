"""`mace filter check`: what users see for good and bad filters (exit codes and messages)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mace.cli import main

ICMP = "corr: icmp_id icmp_seq info: icmp_seq"
GOOD = f"dev-id: 2 proc-id: 4242 in: {ICMP} out: {ICMP}"


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["filter", "check", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "text",
    [
        # the seed's own example shape, with its ip_prot0 spelling
        "dev-id: 2 proc-id: 100 in:corr: ip_src_addr ip_prot0 icmp_seq info: icmp_seq "
        "out:corr: ip_dst_addr ip_prot0 icmp_seq info: icmp_seq",
        "dev-id: 2 proc-id: 100 in: corr: eth_proto ip_src_addr ip_dst_addr ip_prot0 icmp_seq icmp_id "
        "info: eth_src_addr eth_dst_addr eth_proto "
        "out: corr: eth_proto ip_src_addr ip_dst_addr ip_prot0 icmp_seq icmp_id info: icmp_type",
        "dev-id:2 proc-id:100 in:corr:icmp_seq info: out:corr:icmp_seq info:",
        "  dev-id :  7\tproc-id: 1\nin: corr: tcp_seq tcp_src_port tcp_dst_port info: tcp_ack "
        "out: corr: tcp_seq info: ip_src_addr ip_dst_addr  ",
        "dev-id: 3 proc-id: 9 in: corr: udp_src_port udp_dst_port ip_id info: udp_payload "
        "out: corr: udp_payload info: ip_id",
        "dev-id: 3 proc-id: 9 in: corr: ip6_src_addr ip6_dst_addr icmp6_id icmp6_seq info: icmp6_type "
        "out: corr: icmp6_id icmp6_seq info: ip6_flow_label ip6_next_header",
    ],
)
def test_accepts_valid_filters_and_prints_canonical_form(
        capsys: pytest.CaptureFixture[str], text: str) -> None:
    code, out, err = check(capsys, text)
    assert (code, err) == (0, "")
    canonical = out.strip()
    assert canonical.startswith("dev-id: ")
    # the canonical form is a fixed point
    assert check(capsys, canonical)[1].strip() == canonical


def test_canonical_form_orders_fields_and_resolves_alias(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = check(capsys, "dev-id: 2 proc-id: 4 in:corr: icmp_seq ip_prot0 info: "
                                 "out: corr: icmp_seq icmp_id info: icmp_seq eth_proto")
    assert code == 0
    assert out.strip() == ("dev-id: 2 proc-id: 4 in: corr: ip_proto icmp_seq info: "
                           "out: corr: icmp_id icmp_seq info: eth_proto icmp_seq")


def test_json_prints_the_validated_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = check(capsys, "--json", GOOD)
    assert code == 0
    assert json.loads(out) == {
        "dev-id": 2, "proc-id": 4242,
        "in": {"corr": ["icmp_id", "icmp_seq"], "info": ["icmp_seq"]},
        "out": {"corr": ["icmp_id", "icmp_seq"], "info": ["icmp_seq"]},
    }


def test_json_rejection_lists_problems(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = check(capsys, "--json", GOOD.replace("icmp_id icmp_seq info", "icmp_id info", 1))
    assert code == 2
    assert any("cannot tell packets of one flow apart" in p for p in json.loads(out)["problems"])


OVER_GENERAL = "cannot tell packets of one flow apart"

REJECTED: list[tuple[str, str, str]] = [
    # (id, filter text, expected piece of the message)
    ("empty", "", "expected 'dev-id:'"),
    ("blank", "   \n\t ", "expected 'dev-id:'"),
    ("garbage", "hello world", "expected 'dev-id:'"),
    ("missing-colon", "dev-id 2 proc-id: 1 in: " + ICMP + " out: " + ICMP, "expected ':' after 'dev-id'"),
    ("missing-number", "dev-id: proc-id: 1 in: " + ICMP + " out: " + ICMP, "a decimal number for dev-id"),
    ("negative-dev", "dev-id: -2 proc-id: 1 in: " + ICMP + " out: " + ICMP, "a decimal number for dev-id"),
    ("hex-dev", "dev-id: 0x2 proc-id: 1 in: " + ICMP + " out: " + ICMP, "a decimal number for dev-id"),
    ("zero-dev", "dev-id: 0 proc-id: 1 in: " + ICMP + " out: " + ICMP, "dev-id: Input should be greater"),
    ("zero-pid", "dev-id: 2 proc-id: 0 in: " + ICMP + " out: " + ICMP, "proc-id: Input should be greater"),
    ("huge-pid", "dev-id: 2 proc-id: 99999999 in: " + ICMP + " out: " + ICMP,
     "proc-id: Input should be less"),
    ("very-huge-number", "dev-id: 2 proc-id: " + "9" * 40 + " in: " + ICMP + " out: " + ICMP,
     "proc-id is out of range"),
    ("swapped-order", "proc-id: 1 dev-id: 2 in: " + ICMP + " out: " + ICMP, "expected 'dev-id:'"),
    ("missing-out", "dev-id: 2 proc-id: 1 in: " + ICMP, "expected 'out:'"),
    ("missing-in", "dev-id: 2 proc-id: 1 out: " + ICMP, "expected 'in:'"),
    ("missing-info", "dev-id: 2 proc-id: 1 in: corr: icmp_seq out: " + ICMP, "expected 'info:'"),
    ("missing-corr", "dev-id: 2 proc-id: 1 in: info: icmp_seq out: " + ICMP, "expected 'corr:'"),
    ("trailing-junk", GOOD + " extra: 1", "expected end of filter"),
    ("repeated-section", GOOD + " out: " + ICMP, "expected end of filter"),
    ("unknown-field", GOOD.replace("icmp_seq info", "icmp_sq info", 1), "did you mean icmp_seq"),
    ("punctuation-in-fields", GOOD.replace("icmp_id icmp_seq", "icmp_id, icmp_seq", 1),
     "unknown field in in.corr"),
    ("unicode-field", GOOD.replace("icmp_id", "icmp_ïd", 1), "unknown field"),
    ("empty-in-corr", "dev-id: 2 proc-id: 1 in: corr: info: icmp_seq out: " + ICMP, "in: corr is empty"),
    ("empty-out-corr", "dev-id: 2 proc-id: 1 in: " + ICMP + " out: corr: info:", "out: corr is empty"),
    ("addresses-only", GOOD.replace("icmp_id icmp_seq info", "ip_src_addr ip_dst_addr info", 1),
     OVER_GENERAL),
    ("protocol-only", GOOD.replace("icmp_id icmp_seq info", "ip_proto info", 1), OVER_GENERAL),
    ("ports-only", "dev-id: 2 proc-id: 1 in: corr: udp_src_port udp_dst_port info: out: " + ICMP,
     OVER_GENERAL),
    ("flow-constant-only", "dev-id: 2 proc-id: 1 in: corr: ip6_src_addr ip6_flow_label info: out: " + ICMP,
     OVER_GENERAL),
    ("echo-id-only", "dev-id: 2 proc-id: 1 in: corr: icmp_id icmp_type info: out: " + ICMP, OVER_GENERAL),
    ("ethertype-only", "dev-id: 2 proc-id: 1 in: corr: eth_proto info: out: " + ICMP, OVER_GENERAL),
    ("tcp-with-icmp", "dev-id: 2 proc-id: 1 in: corr: tcp_seq icmp_id info: out: " + ICMP,
     "different transport protocols cannot occur in one packet: icmp_id (icmp), tcp_seq (tcp)"),
    ("udp-with-tcp", "dev-id: 2 proc-id: 1 in: " + ICMP + " out: corr: udp_payload tcp_seq info:",
     "different transport protocols"),
    ("ipv4-with-ipv6", "dev-id: 2 proc-id: 1 in: corr: ip_id ip6_src_addr info: out: " + ICMP,
     "different IP families cannot occur in one packet: ip_id (ipv4), ip6_src_addr (ipv6)"),
    ("icmp-over-ipv6", "dev-id: 2 proc-id: 1 in: corr: icmp_seq ip6_dst_addr info: out: " + ICMP,
     "different IP families"),
    ("icmp6-with-icmp", "dev-id: 2 proc-id: 1 in: corr: icmp6_seq icmp_seq info: out: " + ICMP,
     "different IP families"),
    ("info-excluded-by-corr", "dev-id: 2 proc-id: 1 in: corr: tcp_seq info: icmp_seq out: " + ICMP,
     "different transport protocols"),
    ("mac-in-corr", "dev-id: 2 proc-id: 1 in: corr: eth_src_addr icmp_seq info: out: " + ICMP,
     "corr field eth_src_addr is not observable"),
    ("dst-mac-in-corr", "dev-id: 2 proc-id: 1 in: " + ICMP + " out: corr: eth_dst_addr tcp_seq info:",
     "corr field eth_dst_addr is not observable"),
    ("corr-too-wide", "dev-id: 2 proc-id: 1 in: corr: ip6_src_addr ip6_dst_addr tcp_src_port "
     "tcp_dst_port tcp_seq "
     "tcp_ack info: out: " + ICMP, "corr fields take 44 bytes, over the limit of 40"),
    ("info-too-long", "dev-id: 2 proc-id: 1 in: corr: tcp_seq info: eth_src_addr eth_dst_addr eth_proto "
     "ip_src_addr ip_dst_addr ip_proto ip_id out: " + ICMP, "info lists 7 fields, over the limit of 6"),
    ("duplicate-corr", GOOD.replace("icmp_id icmp_seq info", "icmp_seq icmp_seq info", 1),
     "field listed twice: icmp_seq"),
    ("alias-duplicate", "dev-id: 2 proc-id: 1 in: corr: ip_proto ip_prot0 ip_id info: out: " + ICMP,
     "field listed twice: ip_proto"),
    ("too-long", GOOD + " " * 5000, "over the limit of 4096"),
    ("binary", "\x00\x01\x02\xff\xfe", "expected 'dev-id:'"),
    ("control-chars-in-number", "dev-id: 2\x07 proc-id: 1 in: " + ICMP + " out: " + ICMP,
     "expected 'proc-id:'"),
    ("unicode-digits", "dev-id: ٣ proc-id: 1 in: " + ICMP + " out: " + ICMP, "a decimal number for dev-id"),
]


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in REJECTED],
                         ids=[name for name, _, _ in REJECTED])
def test_rejects_with_message_and_exit_code_2(
        capsys: pytest.CaptureFixture[str], text: str, expected: str) -> None:
    code, out, err = check(capsys, text)
    assert code == 2
    assert out == ""
    assert expected in err
    assert "Traceback" not in err
    assert all(line.startswith("mace: ") for line in err.splitlines())


def test_syntax_errors_carry_position_and_token(capsys: pytest.CaptureFixture[str]) -> None:
    text = "dev-id: 2 proc-id: 1 in: corr: icmp_seq bogus info: out: " + ICMP
    _, _, err = check(capsys, text)
    assert f"at column {text.index('bogus') + 1} ('bogus')" in err


def test_every_problem_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    _, _, err = check(capsys, "dev-id: 2 proc-id: 1 in: corr: eth_src_addr ip_src_addr info: "
                              "out: corr: tcp_seq icmp_id info:")
    assert OVER_GENERAL in err
    assert "eth_src_addr is not observable" in err
    assert "different transport protocols" in err


@pytest.mark.parametrize("stdin", [b"", b"\xff\xfe\x00binary", "dev-id: ٣".encode(), b"x" * 100_000])
def test_console_script_reads_stdin_and_never_tracebacks(stdin: bytes) -> None:
    result = subprocess.run([sys.executable, "-m", "mace.cli", "filter", "check", "-"],
                            input=stdin, capture_output=True, check=False, timeout=60)
    assert result.returncode == 2
    assert b"Traceback" not in result.stderr
    assert result.stderr.startswith(b"mace: ")


def test_console_script_accepts_from_stdin() -> None:
    result = subprocess.run([sys.executable, "-m", "mace.cli", "filter", "check", "-"],
                            input=GOOD.encode(), capture_output=True, check=False, timeout=60)
    assert (result.returncode, result.stdout.decode().strip()) == (0, GOOD)
