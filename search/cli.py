"""The `longrope` command line. Each subcommand is a small function; user
errors print one line ``error: ...`` on stderr and exit 2 (``--debug`` shows
the traceback)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from longrope.spaces import UserError

EXIT_USER = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USER)


def cmd_config(args: argparse.Namespace) -> int:
    """Validate a config and print it fully resolved (or the annotated example)."""
    from importlib.resources import files

    from . import config

    if args.config is None:
        print(files("longrope.search").joinpath("example.toml").read_text(), end="")
        return 0
    print(config.dumps(config.load(args.config)), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="longrope",
        description="Search LongRoPE rescale factors (per-frequency λ and n̂) that extend a RoPE "
        "model's context window without retraining, score them by long-context perplexity, "
        "and export them for transformers / vLLM.",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    c = sub.add_parser("config", help="validate a run config and print it resolved; "
                       "without a file, print the annotated example config",
                       description=cmd_config.__doc__)
    c.add_argument("config", nargs="?", help="TOML run config")
    c.set_defaults(func=cmd_config)

    for register in _REGISTRY:
        register(sub)
    return p


# Modules add their subcommands here: (subparsers) -> None.
_REGISTRY: list[Callable[[argparse._SubParsersAction], None]] = []


def main(argv: list[str] | None = None) -> int:
    _load_commands()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _load_commands() -> None:
    """Import the modules that register subcommands (kept lazy: heavy imports
    such as torch happen inside the command functions, so --help is fast)."""
    from . import commands  # noqa: F401


if __name__ == "__main__":
    sys.exit(main())
