"""Arguments several verbs share.

`longrope search` names its run with ``--run-dir``; the verbs that read an existing run
(resume, status, export, report) take it as their first argument. A user who has just typed
``search --run-dir runs/x`` types ``resume --run-dir runs/x`` next, so those verbs take
either form and use the same value.
"""

from __future__ import annotations

import argparse


def add_run_dir(p: argparse.ArgumentParser, help: str = "an existing run directory") -> None:
    """RUN_DIR, or --run-dir RUN_DIR (the spelling `longrope search` uses); one of them."""
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help=f"{help} (or --run-dir RUN_DIR)")
    p.add_argument("--run-dir", dest="run_dir_flag", metavar="RUN_DIR", help=argparse.SUPPRESS)


def resolve_run_dir(args: argparse.Namespace) -> str | None:
    """Set args.run_dir from whichever form was given; None when that is fine (the verb has no
    run directory argument), else an error message for argparse's usage error."""
    if not hasattr(args, "run_dir_flag"):
        return None
    given = [v for v in (args.run_dir, args.run_dir_flag) if v is not None]
    if not given:
        return "the run directory is required: RUN_DIR or --run-dir RUN_DIR"
    if len(given) == 2 and given[0] != given[1]:
        return f"two run directories given: {given[0]!r} and --run-dir {given[1]!r}; give one"
    args.run_dir = given[0]
    del args.run_dir_flag
    return None
