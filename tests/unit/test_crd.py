"""The committed CRD is what the models generate, is a structural schema, and agrees with the models.

The API server itself (CEL rules included) is exercised by tests/cluster/test_operator_schema.py;
here a small validator of the OpenAPI keywords the CRD uses checks the same examples offline.
"""

from __future__ import annotations

import copy
import re
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
import yaml

from mace import crd, fields, safety
from mace.fields import CATALOGUE
from mace.probe import LatencyProbe, LatencyProbeSpec, LatencyProbeStatus

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "latencyprobe.yaml"


def schema_errors(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Errors of ``value`` against the OpenAPI keywords used by the CRD (not CEL rules)."""
    kind = schema.get("type")
    expected = {"object": dict, "array": list, "string": str, "integer": int}
    if kind in expected and (not isinstance(value, expected[kind]) or isinstance(value, bool)):
        return [f"{path}: not {kind}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in enum")
    if isinstance(value, str):
        if len(value) > schema.get("maxLength", len(value)) or len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: length")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: pattern")
    if isinstance(value, int) and not schema.get("minimum", value) <= value <= schema.get("maximum", value):
        errors.append(f"{path}: out of range")
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            errors.append(f"{path}: item count")
        if schema.get("x-kubernetes-list-type") == "set" and len(set(value)) != len(value):
            errors.append(f"{path}: duplicate")
        for index, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{path}[{index}]")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        errors += [f"{path}.{key}: required" for key in schema.get("required", ()) if key not in value]
        errors += [f"{path}.{key}: unknown field" for key in value if properties and key not in properties]
        for key, item in value.items():
            if key in properties:
                errors += schema_errors(item, properties[key], f"{path}.{key}")
    return errors


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(crd.CRD_PATH.read_text())
    return data


@pytest.fixture(scope="module")
def schema(committed: dict[str, Any]) -> dict[str, Any]:
    version = committed["spec"]["versions"][0]
    result: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return result


@pytest.fixture(scope="module")
def example() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return data


def test_committed_crd_is_the_generator_output() -> None:
    assert crd.CRD_PATH.read_text() == crd.render(), "run: python -m mace.crd --write"


def test_check_mode_reports_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "crd.yaml"
    stale.write_text(crd.render().replace("maxItems: 6", "maxItems: 7"))
    assert crd.main(["--check", "--path", str(stale)]) == 1
    assert "maxItems: 7" in capsys.readouterr().out
    assert crd.main(["--write", "--path", str(stale)]) == 0
    assert crd.main(["--check", "--path", str(stale)]) == 0


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, sub in node.get("properties", {}).items():
            found += _walk(sub, f"{path}.{key}")
        if "items" in node:
            found += _walk(node["items"], f"{path}[]")
    return found


def test_schema_is_structural(schema: dict[str, Any]) -> None:
    for path, node in _walk(schema):
        assert "type" in node, f"{path} has no type"
        for banned in ("$ref", "$defs", "anyOf", "allOf", "oneOf", "title", "additionalProperties", "const"):
            assert banned not in node, f"{path} has {banned}"


def test_field_lists_enumerate_the_catalogue(schema: dict[str, Any]) -> None:
    names = {f.value for f in fields.Field} | set(fields.ALIASES)
    for direction in ("in", "out"):
        flow = schema["properties"]["spec"]["properties"][direction]
        for part in ("corr", "info"):
            assert set(flow["properties"][part]["items"]["enum"]) == names
        assert flow["properties"]["info"]["maxItems"] == safety.MAX_INFO_FIELDS
        assert flow["properties"]["corr"]["minItems"] == 1
        assert len(flow["x-kubernetes-validations"]) == len(crd.flow_spec_rules())


def test_corr_max_items_is_the_byte_budget() -> None:
    widths = sorted(info.width for info in CATALOGUE.values())
    most = crd.max_corr_items()
    assert sum(widths[:most]) <= safety.MAX_CORR_BYTES < sum(widths[: most + 1])


def test_schema_accepts_the_example(schema: dict[str, Any], example: dict[str, Any]) -> None:
    assert schema_errors(example, schema) == []


@pytest.mark.parametrize("bad", ["icmp_sq", "ICMP_SEQ", "seq", ""])
def test_schema_rejects_unknown_field_names(schema: dict[str, Any], example: dict[str, Any],
                                             bad: str) -> None:
    probe = copy.deepcopy(example)
    probe["spec"]["out"]["corr"].append(bad)
    assert any("not in enum" in e for e in schema_errors(probe, schema))


@pytest.mark.parametrize(("key", "value"), [
    ("pod", "Not_A_Pod"), ("maxEventsPerSecond", 0), ("durationSeconds", 0), ("outerDevice", "a/b"),
    ("outerDevice", "sixteen-chars-xx"), ("outerDevice", "."), ("outerDevice", ".."),
    ("outerDevice", "eth 0"), ("outerDevice", "eth\x0b0"), ("container", "-x"), ("podd", "x"),
])
def test_schema_and_model_reject_bad_spec_values(schema: dict[str, Any], example: dict[str, Any],
                                                  key: str, value: object) -> None:
    probe = copy.deepcopy(example)
    probe["spec"][key] = value
    assert schema_errors(probe, schema)
    with pytest.raises(ValueError):
        LatencyProbeSpec.model_validate(probe["spec"])


@pytest.mark.parametrize(("name", "valid"), [
    ("eth0", True), ("...", True), (".a", True), ("a.", True), ("x" * 15, True), ("é" * 7, True),
    ("é" * 8, False), ("a\x00b", False), (".", False), ("..", False), ("", False),
])
def test_device_names_follow_linux_dev_valid_name(schema: dict[str, Any], example: dict[str, Any],
                                                  name: str, valid: bool) -> None:
    """Linux counts 15 bytes, not characters: the model says so, the CRD with a CEL rule."""
    spec = {**example["spec"], "outerDevice": name}
    if valid:
        LatencyProbeSpec.model_validate(spec)
    else:
        with pytest.raises(ValueError):
            LatencyProbeSpec.model_validate(spec)
    rules = schema["properties"]["spec"]["properties"]["outerDevice"]["x-kubernetes-validations"]
    assert [r["rule"] for r in rules] == ["size(bytes(self)) <= 15"]


def test_example_round_trips_through_the_models(example: dict[str, Any]) -> None:
    probe = LatencyProbe.model_validate(example)
    assert probe.spec.pod == "pinger"
    dumped = probe.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped == {**example["spec"], "maxEventsPerSecond": 1000}
    assert LatencyProbeSpec.model_validate(dumped) == probe.spec


STATUS = {
    "phase": "Measuring", "node": "node-a",
    "filter": "dev-id: 2 proc-id: 41 in: corr: icmp_seq out: corr: icmp_seq",
    "procIds": [41, 42], "containerID": "containerd://ab", "containerIDs": ["containerd://ab"],
    "podIP": "10.0.0.2", "startedAt": "2025-01-02T03:04:05Z", "observedGeneration": 1,
    "conditions": [{"type": "Resolved", "status": "True", "reason": "Resolved", "message": "ok",
                    "lastTransitionTime": "2025-01-02T03:04:05Z", "observedGeneration": 1}],
    "results": {"state": "Measuring", "message": "", "node": "node-a", "updated": "2025-01-02T03:04:06Z",
                "since": "2025-01-02T03:04:05Z", "heartbeatSeconds": 10,
                "egress": {"count": 5, "p50Ns": 59100, "p90Ns": 61000, "p99Ns": 70000, "maxNs": 80000,
                           "p50": "59.1us"},
                "ingress": {"count": 5, "p50Ns": 17000, "p50": "17.0us"},
                "matched": 10, "unmatched": 0, "dropped": 0, "rateLimited": 0},
}


def test_status_round_trips_and_fits_the_schema(schema: dict[str, Any]) -> None:
    status = LatencyProbeStatus.model_validate(STATUS)
    assert status.model_dump(mode="json", by_alias=True, exclude_none=True) == STATUS
    assert schema_errors(STATUS, schema["properties"]["status"]) == []


def test_printer_columns_point_into_the_schema(committed: dict[str, Any], schema: dict[str, Any]) -> None:
    columns = committed["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in columns if not c.get("priority")] == [
        "Pod", "Node", "Phase", "Egress P50", "Ingress P50", "Samples", "Since", "Age"]
    for column in columns:
        node = schema
        parts = column["jsonPath"].lstrip(".").split(".")
        if parts[0] == "metadata":
            continue
        for part in parts:
            node = node["properties"][part]
        date = column["type"] == "date" and node.get("format") == "date-time"
        assert node["type"] == column["type"] or date


def test_every_pair_of_fields_in_info_is_judged_like_the_model() -> None:
    """Rules of compatibility are lists generated from the catalogue: check them against the model."""
    rules = crd.flow_spec_rules()
    family_rule, transport_rule = rules[3]["rule"], rules[4]["rule"]
    for a, b in combinations(fields.Field, 2):
        problems = safety.flow_problems((fields.Field.ip_id,), (a, b))
        conflict = any("cannot occur in one packet" in p for p in problems)
        lists = re.findall(r"\[([^\[\]]*)\]", family_rule + transport_rule)
        groups = [set(re.findall(r"'(\w+)'", group)) for group in lists if group]
        families, transports = groups[:2], groups[2:]
        named = {a.value, b.value, "ip_id"}
        clash = (all(named & g for g in families)
                 or sum(bool(named & g) for g in transports) > 1)
        assert clash == conflict, (a, b, problems)
