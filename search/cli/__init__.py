"""The `longrope` command line: the application layer above the four packages.

One module per verb or group (``run``: config/search/resume/status;
``evaluate``: eval; ``export``: export/apply; ``demo``; ``bench``). Each
module has a ``register(subparsers)`` that adds its verbs; nothing below this
package imports it. User errors print one line ``error: ...`` on stderr and
exit 2 (``--debug`` shows the traceback). Heavy imports (torch, transformers,
ray) stay inside the verb functions, so ``longrope --help`` starts fast.
"""

from __future__ import annotations

import argparse
import os
import sys

from longrope.runs.lease import RunBusy
from longrope.spaces import UserError

from . import bench, check, demo, evaluate, export, report, run
from .args import resolve_run_dir

EXIT_USER = 2
EXIT_BUSY = 75  # sysexits' EX_TEMPFAIL: the run's lease is held just now (runs/lease.RunBusy); try later

# The verb modules, in the order their verbs appear in --help.
VERBS = (run, evaluate, export, report, check, demo, bench)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USER)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="longrope",
        description="Search LongRoPE rescale factors (per-frequency λ and n̂) that extend a RoPE "
        "model's context window without retraining, score them by long-context perplexity, "
        "and export them for transformers / vLLM.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    # --debug is accepted after the verb too (`longrope search x.toml --debug`); SUPPRESS keeps
    # a verb without it from resetting the top-level value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    add_parser = sub.add_parser
    sub.add_parser = lambda *a, **kw: add_parser(*a, parents=[common, *kw.pop("parents", [])], **kw)
    for verb in VERBS:
        verb.register(sub)
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("longrope-search")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER
    problem = resolve_run_dir(args)
    if problem:  # the same one line as any other usage mistake
        print(f"error: {parser.prog} {args.command}: {problem} (see --help)", file=sys.stderr)
        return EXIT_USER
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handler below
        return rc
    except UserError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BUSY if isinstance(e, RunBusy) else EXIT_USER
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `longrope status RUN | head`: the reader left; say nothing, and point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
