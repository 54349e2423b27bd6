"""The `e2llm` command line: arguments, I/O and errors. All work happens in the packages.

Each subcommand lives in its own module exposing `add_parser(subparsers)` (which sets
`func=run` on its parser) and `run(args) -> int`. Bad input anywhere raises `InputError`,
printed here as one line with exit code 2 (a lower layer's parameter name shown as the flag that
sets it: `cli/options.py`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from e2llm.cli.logs import configure_logging
from e2llm.cli.options import with_flag
from e2llm.errors import InputError

# subcommand -> module; imported lazily so `e2llm plan` does not pay for torch or Ray.
COMMANDS = {
    "plan": "e2llm.cli.plan_cmd",
    "simulate": "e2llm.cli.simulate_cmd",
    "compare": "e2llm.cli.compare_cmd",
    "serve": "e2llm.cli.serve_cmd",
    "profile": "e2llm.cli.profile_cmd",
    "bench": "e2llm.cli.bench_cmd",
    "testbed": "e2llm.cli.testbed_cmd",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="e2llm",
        description="Plan, simulate and serve one LLM over heterogeneous edge/fog devices.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  e2llm plan examples/clusters/paper-testbed.yaml --model gpt-oss-20b "
        "--workload examples/workloads/longreason-extended.yaml\n  e2llm serve",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    # Only import the module of the command being run (plus all of them for --help).
    wanted = [a for a in argv if a in COMMANDS][:1] or list(COMMANDS)
    for name in COMMANDS:
        if name in wanted:
            try:
                module = importlib.import_module(COMMANDS[name])
            except ModuleNotFoundError as e:
                if e.name != COMMANDS[name]:
                    raise
                continue  # command not built yet
            module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "log_level", None):
        configure_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"e2llm {args.command}: error: {with_flag(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
