"""The `report` verb: a Markdown page and PNGs per stage of a run (runs/report.py)."""

from __future__ import annotations

import argparse

from .args import add_run_dir


def cmd_report(args: argparse.Namespace) -> int:
    """Write a run's report: a Markdown page with, per stage, the best value against evaluations,
    the best λ curve against the seeds' curves, n̂ and mscale, and the held-out scores. Reads the
    run without its lock, so a running search can be reported on."""
    from longrope.runs import Run
    from longrope.runs.report import write_report

    page = write_report(Run.open(args.run_dir), args.out)
    print(f"report: {page}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("report", help="a Markdown page and PNGs per stage of a run",
                       description=cmd_report.__doc__)
    add_run_dir(r, "a run directory (it may still be running)")
    r.add_argument("-o", "--out", metavar="DIR", help="where to write report.md and the PNGs "
                   "(default: RUN/report/)")
    r.set_defaults(func=cmd_report)
