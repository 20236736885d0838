"""The ``mace`` command: check Protocol Filters, list the field catalogue, run the local demo."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from mace import catalogue_doc
from mace.grammar import MAX_FILTER_CHARS, FilterError, Problem, parse, render

EXIT_OK = 0
EXIT_UNAVAILABLE = 1
EXIT_REJECTED = 2


def _read_filter_text(argument: str) -> str:
    if argument != "-":
        return argument
    data = sys.stdin.buffer.read(MAX_FILTER_CHARS * 4 + 1)
    return data.decode("utf-8", errors="replace")


def _check(args: argparse.Namespace) -> int:
    text = _read_filter_text(args.filter)
    try:
        parsed = parse(text)
    except FilterError as error:
        return _report_rejection(error.problems, as_json=args.json)
    if args.json:
        print(json.dumps(parsed.model_dump(mode="json", by_alias=True)))
    else:
        print(render(parsed))
    return EXIT_OK


def _report_rejection(problems: list[Problem], *, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"problems": [str(p) for p in problems]}))
    for problem in problems:
        print(f"mace: {problem}", file=sys.stderr)
    return EXIT_REJECTED


def _fields(args: argparse.Namespace) -> int:
    print(catalogue_doc.markdown() if args.markdown else catalogue_doc.plain())
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    try:
        from mace_lab.demo import run_demo  # imported late: the lab is not in the images
    except ModuleNotFoundError as error:
        if error.name != "mace_lab":
            raise
        print("mace demo: needs the test lab (the mace_lab package), which only a source checkout installs: "
              "run it there with scripts/dev demo", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return run_demo(duration=args.duration, stream=not args.no_stream)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mace", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    filter_cmd = commands.add_parser("filter", help="work with Protocol Filter text")
    filter_sub = filter_cmd.add_subparsers(dest="filter_command", required=True)
    check = filter_sub.add_parser(
        "check", help="validate a filter; print its canonical form (exit 0) or its problems (exit 2)")
    check.add_argument("filter", help="the filter text, or - to read it from standard input")
    check.add_argument("--json", action="store_true", help="print the validated model as JSON")
    check.set_defaults(run=_check)
    fields = filter_sub.add_parser("fields", help="list the fields a flow spec may use")
    fields.add_argument("--markdown", action="store_true", help="print the catalogue as a Markdown table")
    fields.set_defaults(run=_fields)

    demo = commands.add_parser(
        "demo", help="measure a pinging pod in a throwaway namespace topology (needs root)")
    demo.add_argument("--duration", type=float, default=8.0, help="seconds to measure (default 8)")
    demo.add_argument("--no-stream", action="store_true",
                      help="in-kernel histograms only, no per-packet lines")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mace`` console script."""
    args = _parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
