"""Render the field catalogue and the safety rules for people (CLI and docs/filter-language.md)."""

from __future__ import annotations

from mace.fields import ALIASES, CATALOGUE, End, FieldInfo
from mace.safety import RULES

_ENDS = {frozenset({End.process, End.device}): "both", frozenset({End.device}): "device only"}


def _row(info: FieldInfo) -> tuple[str, ...]:
    aliases = [alias for alias, field in ALIASES.items() if field == info.field]
    name = info.field.value + (f" (alias {', '.join(aliases)})" if aliases else "")
    return (name, info.layer, f"{info.width * 8} bits", info.location, _ENDS[info.ends],
            "yes" if info.per_packet else "no", info.description)


_HEAD = ("field", "layer", "width", "read from", "observable at", "per packet", "meaning")


def markdown() -> str:
    """The catalogue as a Markdown table followed by the safety rules."""
    lines = ["| " + " | ".join(_HEAD) + " |", "|" + "---|" * len(_HEAD)]
    lines += ["| " + " | ".join(_row(info)) + " |" for info in CATALOGUE.values()]
    lines += ["", "Safety rules (each flow spec must satisfy all of them):", ""]
    lines += [f"- **{name}**: {text}" for name, text in RULES]
    return "\n".join(lines)


def plain() -> str:
    """The catalogue as aligned plain text."""
    rows = [_HEAD[:6]] + [_row(info)[:6] for info in CATALOGUE.values()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)
