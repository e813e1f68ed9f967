"""The `metazoo` console script.

Each subcommand lives in its own module under `cluster/commands/` exposing
`add_arguments(parser)` and `run(args) -> int`. Modules are imported only when their command runs, so
`metazoo --help` stays fast and heavy dependencies (ray, deepspeed, mlflow) load only when needed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

# Errors that mean "bad input or unreachable service", not a bug: reported without a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError, ConnectionError, TimeoutError)

COMMANDS = {
    "generate": ("cluster.commands.generate", "train a built-in zoo and write its checkpoints"),
    "ingest": ("cluster.commands.ingest", "turn a model zoo into a weight table"),
    "train": ("cluster.commands.train", "train a metanetwork from a config"),
    "eval": ("cluster.commands.evaluate", "evaluate a trained metanetwork on a weight table"),
    "score": ("cluster.commands.score", "predict the generalisation of checkpoints"),
    "pipeline": ("cluster.commands.pipeline", "run the whole pipeline from a config"),
    "benchmark": ("cluster.commands.benchmark", "train families x seeds as Ray Tune trials, with intervals"),
    "submit": ("cluster.commands.submit", "submit a metazoo command as a Ray job"),
}


def _available() -> dict[str, tuple[str, str]]:
    out = {}
    for name, (module, help_) in COMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            out[name] = (module, help_)
    return out


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metazoo", description="Metanetworks over model zoos.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in _available().items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == command:  # import only the module that will run
            importlib.import_module(module).add_arguments(p)
    return parser


def _user_error(exc: BaseException) -> bool:
    """Errors whose message says what is wrong and what to do; other exceptions keep their traceback."""
    if isinstance(exc, USER_ERRORS):
        return True
    ingest = sys.modules.get("zoo_ingest")  # imported by any command that can raise its errors
    return ingest is not None and isinstance(exc, (ingest.IngestError, ingest.StorageError))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    available = _available()
    if command is not None and command not in available:
        print(f"metazoo: unknown command {command!r}; choose from {', '.join(available)}", file=sys.stderr)
        return 2
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(available[args.command][0]).run(args) or 0)
    except Exception as exc:
        # bad input gets one clear line; set METAZOO_DEBUG=1 for the traceback
        if os.environ.get("METAZOO_DEBUG") or not _user_error(exc):
            raise
        print(f"metazoo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"metazoo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
