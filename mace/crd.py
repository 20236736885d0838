"""Generate the LatencyProbe CustomResourceDefinition from the pydantic models.

``python -m mace.crd`` prints the CRD as YAML; ``--write`` updates ``crds/latencyprobe.yaml``,
``--check`` exits 1 if that file differs from what the models give.

The pydantic JSON schema is turned into a Kubernetes *structural* schema (no ``$ref``,
``anyOf`` or ``title``; nullable fields become optional ones). Field names get an enum of the
catalogue (plus accepted aliases), list sizes come from the safety limits, and the safety
rules that can be checked on the spec alone become CEL rules, so the API server refuses such
probes at ``kubectl apply``. The operator checks every rule again and reports what remains as
an ``InvalidFilter`` condition.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from mace import fields, probe, safety
from mace.fields import CATALOGUE, FAMILY, TRANSPORT, End, Field, FieldInfo, Header

CRD_PATH = Path(__file__).resolve().parent.parent / "crds" / "latencyprobe.yaml"
"""Where the generated CRD is committed."""

Schema = dict[str, Any]

_DROP = {"title", "additionalProperties"}


def _names(keep: Callable[[FieldInfo], bool]) -> list[str]:
    """Names (aliases included) of the catalogue fields ``keep`` selects, in catalogue order."""
    chosen = [f for f, info in CATALOGUE.items() if keep(info)]
    names = [f.value for f in chosen]
    names += [alias for alias, f in fields.ALIASES.items() if f in chosen]
    return names


def _implying(axis: dict[Header, Header | None], header: Header) -> list[str]:
    """Names of the fields whose header implies ``header`` on ``axis`` (IP family or transport)."""
    return _names(lambda info: axis[info.header] == header)


def _field_names() -> list[str]:
    return _names(lambda _: True)


def max_corr_items() -> int:
    """The most fields a ``corr`` list can hold within the :data:`safety.MAX_CORR_BYTES` budget."""
    total = count = 0
    for width in sorted(info.width for info in CATALOGUE.values()):
        if total + width > safety.MAX_CORR_BYTES:
            break
        total += width
        count += 1
    return count


def _cel_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(f"'{item}'" for item in items) + "]"


def flow_spec_rules() -> list[Schema]:
    """CEL rules for the safety catches that a flow spec alone decides (see mace.safety.RULES)."""
    every = "(self.corr + (has(self.info) ? self.info : []))"
    per_packet = _names(lambda i: i.per_packet)
    device_only = _names(lambda i: End.process not in i.ends or End.device not in i.ends)
    widths = {name: CATALOGUE[fields.lookup(name) or Field(name)].width for name in _field_names()}
    width_map = "{" + ", ".join(f"'{name}': {width}" for name, width in widths.items()) + "}"
    families = [_implying(FAMILY, h) for h in (Header.ipv4, Header.ipv6)]
    transports = [_implying(TRANSPORT, h) for h in (Header.icmp, Header.icmp6, Header.udp, Header.tcp)]
    return [
        {"rule": f"self.corr.exists(f, f in {_cel_list(per_packet)})",
         "message": "corr needs a per-packet field (" + ", ".join(per_packet)
                    + "): addresses, ports and protocols alone match every packet of a flow",
         "fieldPath": ".corr"},
        {"rule": f"self.corr.all(f, !(f in {_cel_list(device_only)}))",
         "message": "corr may not hold " + ", ".join(device_only)
                    + ": they are rewritten on the way (use them in info)",
         "fieldPath": ".corr"},
        {"rule": f"self.corr.map(f, {width_map}[f]).sum() <= {safety.MAX_CORR_BYTES}",
         "message": f"corr fields add up to more than {safety.MAX_CORR_BYTES} bytes",
         "fieldPath": ".corr"},
        {"rule": f"!({every}.exists(f, f in {_cel_list(families[0])}) && "
                 f"{every}.exists(f, f in {_cel_list(families[1])}))",
         "message": "fields of different IP families (IPv4 and IPv6) cannot occur in one packet"},
        {"rule": "[" + ", ".join(_cel_list(t) for t in transports) + "]"
                 f".filter(t, {every}.exists(f, f in t)).size() <= 1",
         "message": "fields of different transport protocols (ICMP, ICMPv6, UDP, TCP) cannot occur "
                    "in one packet"},
    ]


def _field_enum() -> Schema:
    names = _field_names()
    return {"type": "string", "enum": names, "maxLength": max(len(n) for n in names),
            "description": "A packet field of the catalogue (see docs/latencyprobe.md)."}


def structural(node: Any, defs: dict[str, Schema]) -> Any:
    """Turn (part of) a pydantic JSON schema into a Kubernetes structural schema."""
    if isinstance(node, list):
        return [structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        target = _field_enum() if name == Field.__name__ else structural(defs[name], defs)
        extra = {k: v for k, v in node.items() if k != "$ref"}
        return {**target, **structural(extra, defs)}
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {node['anyOf']}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        return {**structural(options[0], defs), **structural(rest, defs)}
    out: Schema = {}
    for key, value in node.items():
        if key in _DROP or key == "$defs" or (key == "default" and value is None):
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out[key] = {name: structural(sub, defs) for name, sub in value.items()}
        else:
            out[key] = structural(value, defs)
    return out


def _model_schema(model: type[probe._Model]) -> Schema:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema: Schema = structural(raw, raw.get("$defs", {}))
    return schema


def _flow_spec_schema(schema: Schema) -> Schema:
    for name in ("corr", "info"):
        schema["properties"][name]["x-kubernetes-list-type"] = "set"
    schema["properties"]["corr"]["maxItems"] = max_corr_items()
    schema["x-kubernetes-validations"] = flow_spec_rules()
    return schema


def spec_schema() -> Schema:
    """The structural schema of ``spec``."""
    schema = _model_schema(probe.LatencyProbeSpec)
    for direction in ("in", "out"):
        _flow_spec_schema(schema["properties"][direction])
    return schema


def status_schema() -> Schema:
    """The structural schema of ``status``."""
    schema = _model_schema(probe.LatencyProbeStatus)
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    return schema


PRINTER_COLUMNS: list[Schema] = [
    {"name": "Pod", "type": "string", "jsonPath": ".spec.pod"},
    {"name": "Node", "type": "string", "jsonPath": ".status.node"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Egress P50", "type": "string", "jsonPath": ".status.results.egress.p50"},
    {"name": "Ingress P50", "type": "string", "jsonPath": ".status.results.ingress.p50"},
    {"name": "Samples", "type": "integer", "jsonPath": ".status.results.matched"},
    {"name": "Since", "type": "date", "jsonPath": ".status.results.since"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Filter", "type": "string", "jsonPath": ".status.filter", "priority": 1},
]


def crd() -> Schema:
    """The whole CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{probe.PLURAL}.{probe.GROUP}"},
        "spec": {
            "group": probe.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": probe.KIND,
                "listKind": f"{probe.KIND}List",
                "plural": probe.PLURAL,
                "singular": probe.SINGULAR,
                "shortNames": list(probe.SHORT_NAMES),
                "categories": ["mace"],
            },
            "versions": [{
                "name": probe.VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "Per-packet latency that the node's network path adds to one pod's "
                                   "traffic, measured by the Mace agent on the pod's node.",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema(),
                        "status": status_schema(),
                    },
                }},
            }],
        },
    }


HEADER = "# Generated by `python -m mace.crd --write` from mace/probe.py: do not edit by hand.\n"


def render() -> str:
    """The CRD as the YAML text committed in ``crds/latencyprobe.yaml``."""
    body = yaml.safe_dump(crd(), sort_keys=True, width=100, allow_unicode=True)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    """Print, write or check the generated CRD."""
    parser = argparse.ArgumentParser(prog="python -m mace.crd", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"write {CRD_PATH.name} under crds/")
    mode.add_argument("--check", action="store_true", help="exit 1 if the committed CRD is out of date")
    parser.add_argument("--path", type=Path, default=CRD_PATH, help="CRD file for --write/--check")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        args.path.parent.mkdir(parents=True, exist_ok=True)
        args.path.write_text(text)
        return 0
    if args.check:
        current = args.path.read_text() if args.path.exists() else ""
        if current == text:
            return 0
        sys.stdout.writelines(difflib.unified_diff(
            current.splitlines(keepends=True), text.splitlines(keepends=True),
            str(args.path), "generated"))
        print(f"{args.path} is out of date: run python -m mace.crd --write", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
