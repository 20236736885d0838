"""The docs show the catalogue the code holds."""

from __future__ import annotations

from pathlib import Path

from mace import catalogue_doc

DOC = Path(__file__).parents[2] / "docs" / "filter-language.md"


def test_filter_language_doc_holds_the_current_catalogue() -> None:
    text = DOC.read_text()
    start = text.index("<!-- generated: mace filter fields --markdown -->\n")
    end = text.index("<!-- end generated -->")
    generated = text[start:end].split("\n", 1)[1]
    assert generated == catalogue_doc.markdown() + "\n", \
        "docs/filter-language.md is stale: paste `mace filter fields --markdown` between the markers"
