"""Verbs that make and read runs: config, search, resume, status."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from longrope.runs.lease import LOCK_TIMEOUT
from longrope.spaces import UserError

from .args import add_run_dir


def cmd_config(args: argparse.Namespace) -> int:
    """Validate a config and print it fully resolved (or the annotated example)."""
    from importlib.resources import files

    from longrope.search import config

    if args.config is None:
        print(files("longrope.search").joinpath("example.toml").read_text(), end="")
        return 0
    print(config.dumps(config.load(args.config)), end="")
    return 0


def _overrides(cfg, args: argparse.Namespace):
    if getattr(args, "workers", None) is not None:
        if args.workers < 1:
            raise UserError(f"--workers must be >= 1, got {args.workers}")
        cfg.workers.count = args.workers
        if args.workers > 1:
            cfg.workers.backend = "ray"
    if getattr(args, "address", None):
        cfg.workers.address = args.address
        cfg.workers.backend = "ray"
    elif os.environ.get("RAY_ADDRESS") and cfg.workers.backend == "ray":
        # the cluster this job runs on (`ray job submit` sets it) beats the address a run's config
        # froze when it started, whose head is likely gone on a resume: --address > RAY_ADDRESS > config
        cfg.workers.address = os.environ["RAY_ADDRESS"]
    if getattr(args, "max_evals", None) is not None:
        if args.max_evals < 1:
            raise UserError(f"--max-evals must be >= 1, got {args.max_evals}")
        cfg.search.max_evals = args.max_evals
        full = cfg.full_budget()
        if args.max_evals > full:  # a cap that looks like a raise: say why nothing more runs
            print(f"note: --max-evals {args.max_evals} only caps a stage's evaluations, here population + "
                  f"iterations x children = {full}; to run more, raise search.iterations (for a resume, in "
                  "the run's config.toml)", file=sys.stderr)
    return cfg


def cmd_search(args: argparse.Namespace) -> int:
    """Run (or continue) a search described by a TOML config into a run directory."""
    from longrope.search import config
    from longrope.search.driver import run_search

    cfg = _overrides(config.load(args.config), args)
    results = run_search(cfg, args.run_dir, resume=False, progress=not args.quiet,
                         lock_timeout=args.lock_timeout)
    print(f"done: {', '.join(results)} in {args.run_dir}; export with: longrope export {args.run_dir}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue an interrupted search from its journal; the result equals an uninterrupted run
    (cmaes and tpe: in-process; on several Ray workers they follow the order results arrive in)."""
    from longrope.runs import Run
    from longrope.search import config
    from longrope.search.driver import run_search

    run = Run.open(args.run_dir)
    if args.repair:
        run.check_writable()  # a read-only run: one line, not the lock guard's OSError
        with run.lock(args.lock_timeout):
            note = run.drop_unreadable_lines()
        if note:
            run.event(f"--repair: {note}")
            print(f"warning: {note}", file=sys.stderr)
    try:
        cfg = config.from_dict(config.frozen(run.config()))
    except UserError as e:
        raise UserError(f"{run.path / 'config.toml'}: {e}") from None
    cfg = _overrides(cfg, args)
    if args.model:  # a moved copy of the run's model: checked against its recorded fingerprint
        if not Path(args.model).expanduser().exists():
            raise UserError(f"--model {args.model} does not exist")
        old, cfg.model.path = cfg.model.path, str(Path(args.model).expanduser().absolute())
        cfg.model.tokenizer = cfg.model.path if cfg.model.tokenizer == old else cfg.model.tokenizer
    results = run_search(cfg, args.run_dir, resume=True, progress=not args.quiet,
                         lock_timeout=args.lock_timeout)
    print(f"done: {', '.join(results)} in {args.run_dir}; export with: longrope export {args.run_dir}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Per stage: evaluations done / budget, best ppl, generation, running/failed/pruned, ETA."""
    from longrope.runs import Run
    from longrope.runs.status import render_status

    print(render_status(Run.open(args.run_dir), args.json))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("config", help="validate a run config and print it resolved; "
                       "without a file, print the annotated example config",
                       description=cmd_config.__doc__)
    c.add_argument("config", nargs="?", help="TOML run config")
    c.set_defaults(func=cmd_config)

    from longrope.search.proposers import SAMPLERS

    samplers = "Samplers (search.sampler): " + "; ".join(f"{k}: {v}" for k, (_, v) in SAMPLERS.items()) + "."
    for name, fn, is_resume in (("search", cmd_search, False), ("resume", cmd_resume, True)):
        p = sub.add_parser(name, help=fn.__doc__.split(";")[0].rstrip("."), description=fn.__doc__,
                           epilog=samplers)
        if is_resume:
            add_run_dir(p)
            p.add_argument("--repair", action="store_true", help="drop journal lines that cannot be read "
                           "(a backup is kept); the results they held are re-run")
            p.add_argument("--model", metavar="PATH", help="the run's model at a new path (a moved "
                           "folder, another node's mount): taken when it holds the weights the run "
                           "recorded (config.json, each weight file's size and ends); kept in config.toml")
        else:
            p.add_argument("config", help="TOML run config (see `longrope config`)")
            p.add_argument("--run-dir", required=True, help="where the run lives; an existing run "
                           "with the same search-defining config is resumed")
        p.add_argument("--workers", type=int, help="model replicas; more than 1 uses Ray")
        p.add_argument("--address", help="join this Ray cluster (auto: the one `ray start` made on this "
                       "machine); else RAY_ADDRESS, else workers.address of the config (a resume: the "
                       "run's, as last driven), else a local Ray of its own")
        p.add_argument("--max-evals", type=int, help="cap on evaluations per stage; kept in the run's "
                       "config.toml, so a later plain resume stops there too (resume --max-evals N "
                       "raises it)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("--lock-timeout", type=float, default=LOCK_TIMEOUT, metavar="SECONDS",
                       help="take over the run's lock when its holder (on any host) has not renewed "
                       "its heartbeat for this long: a driver preempted elsewhere (default: %(default)s)")
        p.set_defaults(func=fn)

    st = sub.add_parser("status", help="progress of a run", description=cmd_status.__doc__)
    add_run_dir(st)
    st.add_argument("--json", action="store_true", help="one JSON object with a 'stages' list")
    st.set_defaults(func=cmd_status)
