"""Parser and canonical renderer for the seed's Protocol Filter text form.

    <Protocol Filter> ::= dev-id: <Num> proc-id: <Num> in:<Flow Spec> out:<Flow Spec>
    <Flow Spec>       ::= corr:<Fields> info:<Fields>

Whitespace between tokens is optional around colons and required between words.
Fields may be listed in any order; the canonical form lists them in catalogue order.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass

from pydantic import ValidationError

from mace import fields
from mace.models import FlowSpec, ProtocolFilter
from mace.safety import UnsafeFlowSpec

MAX_FILTER_CHARS = 4096
"""Longer input is refused before it is tokenised (the longest valid filter is far shorter)."""

_TOKEN = re.compile(r"\s*(?:(?P<word>[A-Za-z0-9_-]+)|(?P<colon>:)|(?P<other>\S))")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a filter: a message, and where in the text when known."""

    message: str
    position: int | None = None
    token: str | None = None

    def __str__(self) -> str:
        if self.position is None:
            return self.message
        return f"at column {self.position + 1} ({_show(self.token)}): {self.message}"


class FilterError(ValueError):
    """A filter text was refused; ``problems`` lists every reason found."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def _show(token: str | None) -> str:
    if not token:
        return "end of input"
    shown = token if len(token) <= 40 else token[:40] + "..."
    return repr(shown)


def _unknown_field(where: str, name: str) -> str:
    known = [f.value for f in fields.Field] + list(fields.ALIASES)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]}?" if close else "; `mace filter fields` lists them"
    return f"unknown field in {where}{hint}"


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    position: int


def _tokens(text: str) -> Iterator[_Token]:
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:  # only trailing whitespace is left
            return
        kind = match.lastgroup or "other"
        yield _Token(kind, match.group(kind), match.start(kind))
        pos = match.end()


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = list(_tokens(text))
        self.index = 0
        self.end = len(text)

    def _peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def _fail(self, expected: str) -> FilterError:
        token = self._peek()
        if token is None:
            return FilterError([Problem(f"expected {expected}", self.end, None)])
        return FilterError([Problem(f"expected {expected}", token.position, token.text)])

    def _keyword(self, word: str) -> None:
        token = self._peek()
        if token is None or token.kind != "word" or token.text != word:
            raise self._fail(f"'{word}:'")
        self.index += 1
        colon = self._peek()
        if colon is None or colon.kind != "colon":
            raise self._fail(f"':' after '{word}'")
        self.index += 1

    def _number(self, name: str) -> int:
        token = self._peek()
        if token is None or token.kind != "word" or not token.text.isdigit() or not token.text.isascii():
            raise self._fail(f"a decimal number for {name}")
        self.index += 1
        if len(token.text) > 10:
            raise FilterError([Problem(f"{name} is out of range", token.position, token.text)])
        return int(token.text)

    def _fields(self, where: str) -> tuple[list[str], list[Problem]]:
        names: list[str] = []
        problems: list[Problem] = []
        while (token := self._peek()) is not None:
            follows = self.tokens[self.index + 1] if self.index + 1 < len(self.tokens) else None
            if token.kind == "word" and follows is not None and follows.kind == "colon":
                break  # the next section (or a misplaced one, reported by the caller)
            self.index += 1
            field = fields.lookup(token.text) if token.kind == "word" else None
            if field is None:
                problems.append(Problem(_unknown_field(where, token.text), token.position, token.text))
            else:
                names.append(token.text)
        return names, problems

    def _flow_spec(self, direction: str) -> tuple[dict[str, list[str]], list[Problem]]:
        self._keyword("corr")
        corr, corr_problems = self._fields(f"{direction}.corr")
        self._keyword("info")
        info, info_problems = self._fields(f"{direction}.info")
        return {"corr": corr, "info": info}, corr_problems + info_problems

    def parse(self) -> dict[str, object]:
        self._keyword("dev-id")
        dev_id = self._number("dev-id")
        self._keyword("proc-id")
        proc_id = self._number("proc-id")
        self._keyword("in")
        inbound, in_problems = self._flow_spec("in")
        self._keyword("out")
        outbound, out_problems = self._flow_spec("out")
        if self._peek() is not None:
            raise self._fail("end of filter")
        if in_problems or out_problems:
            raise FilterError(in_problems + out_problems)
        return {"dev-id": dev_id, "proc-id": proc_id, "in": inbound, "out": outbound}


def _validation_problems(error: ValidationError) -> list[Problem]:
    problems: list[Problem] = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, UnsafeFlowSpec):
            problems += [Problem(f"{where}: {message}") for message in cause.problems]
        else:
            message = item["msg"].removeprefix("Value error, ")
            problems.append(Problem(f"{where}: {message}" if where else message))
    return problems


def parse(text: str) -> ProtocolFilter:
    """Parse filter text into a validated :class:`ProtocolFilter`, or raise :class:`FilterError`."""
    if len(text) > MAX_FILTER_CHARS:
        raise FilterError([Problem(f"filter text is {len(text)} characters long, over the "
                                   f"limit of {MAX_FILTER_CHARS}")])
    raw = _Parser(text).parse()
    try:
        return ProtocolFilter.model_validate(raw)
    except ValidationError as error:
        raise FilterError(_validation_problems(error)) from None


def render_flow_spec(spec: FlowSpec) -> str:
    """Canonical text of a flow spec: ``corr: a b info: c``."""
    corr = " ".join(f.value for f in spec.corr)
    info = " ".join(f.value for f in spec.info)
    return " ".join(part for part in ("corr:", corr, "info:", info) if part)


def render(f: ProtocolFilter) -> str:
    """Canonical text of a filter; ``parse(render(f)) == f``."""
    return (f"dev-id: {f.dev_id} proc-id: {f.proc_id} "
            f"in: {render_flow_spec(f.inbound)} out: {render_flow_spec(f.outbound)}")
