"""`longrope status`: per stage evaluations, best ppl, generation, counts, tokens, ETA, and the
LongRoPE2 settings (critical dimension, searched mscale) the stage ran with; and who drives the
run (the lease in run.lock), since an ETA says nothing of whether a driver is still at work."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from shlex import quote
from typing import TYPE_CHECKING, Any

from .lease import HEARTBEAT, LOCK_TIMEOUT, Lease, lease_age, read_lease, recorded_timeout
from .optuna_io import study_system_attrs
from .report import report_path
from .rundir import LOCK, Run
from .vocab import DOC_NLL, DTYPE, HELDOUT, REQUEUED, SECONDS, SLOT, STAGE, STOPPED, TOKENS

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from .best import BestRecord


def holder(path: Path) -> dict | None:
    """Who drives the run, for `longrope status`: None when nobody holds its lock, else host, pid,
    heartbeat age (this host's clock), the holder's --lock-timeout and state: live; silent (older
    than that timeout: a resume with it takes it over after watching it); gone (its process no
    longer runs on this host: taken at once); unreadable."""
    other = read_lease(path)
    if other is None:
        return None
    if not other:
        return {"state": "unreadable", "host": None, "pid": None, "heartbeat_age": None, "timeout": None}
    timeout = recorded_timeout(other) or LOCK_TIMEOUT  # a lease from before it was recorded: the default
    age = lease_age(other)
    state = "gone" if Lease.dead_here(other) else "silent" if age > timeout else "live"
    return {"state": state, "host": other.get("host"), "pid": other.get("pid"),
            "heartbeat_age": round(age, 1) if age != float("inf") else None, "timeout": timeout}


def counted_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's trials less those abandoned by a dead driver (their copies count instead)."""
    return [t for t in study.get_trials(deepcopy=False) if not t.system_attrs.get(REQUEUED)]


def evaluations(run: Run) -> int:
    """Finished evaluations (complete, pruned or failed) over all the run's stages."""
    return sum(t.state.is_finished() for study in run.studies() for t in counted_trials(study))


def tokens_saved(trials: list[FrozenTrial]) -> int | None:
    """Tokens the early abort did not run: what a complete trial ran less what each pruned one
    did (with ``workers.batch_docs`` a pruned trial has run its whole batch, scored or not), or,
    where a trial did not record its tokens, its unscored documents times the tokens of one.
    Exact only when every complete trial scored the same number of documents of the same token
    count (each document is scored on its first L tokens); None when they differ or there is no
    complete trial to measure a document by (0 when nothing was pruned)."""
    from optuna.trial import TrialState

    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    if not pruned:
        return 0
    shapes = {(len(t.user_attrs.get(DOC_NLL, [])), t.user_attrs.get(TOKENS)) for t in trials
              if t.state == TrialState.COMPLETE}
    if len(shapes) != 1:
        return None
    docs, tokens = shapes.pop()
    if not docs or not tokens or tokens % docs:
        return None
    per_doc = tokens // docs

    def ran(t: FrozenTrial) -> int:
        run = t.user_attrs.get(TOKENS)
        return int(run) if isinstance(run, int) else min(len(t.user_attrs.get(DOC_NLL, [])), docs) * per_doc
    return sum(max(tokens - ran(t), 0) for t in pruned)


PACE_WINDOW = 20  # the last evaluations whose completion times give the pace
PAUSE = 10  # a gap between completions this many times their median is a pause (killed, then resumed)


def pace(trials: list[FrozenTrial]) -> float | None:
    """Evaluations per second over the last PACE_WINDOW completions: what all workers together
    deliver (two workers complete twice as often as one). A pause (the run killed, resumed later)
    counts as one median gap, not its length, or the ETA after a resume would count the hours the
    run lay idle for PACE_WINDOW evaluations. None with fewer than three."""
    ends = sorted(t.datetime_complete for t in trials if t.state.is_finished() and t.datetime_complete)
    recent = ends[-PACE_WINDOW:]
    gaps = [(b - a).total_seconds() for a, b in zip(recent, recent[1:], strict=False)]
    if len(gaps) < 2:
        return None
    median = sorted(gaps)[len(gaps) // 2]
    span = sum(g if g <= PAUSE * median else median for g in gaps)
    return len(gaps) / span if span > 0 else None


def eta_seconds(trials: list[FrozenTrial], remaining: int) -> float | None:
    """Seconds to score `remaining` evaluations at the measured pace; before there is one, at
    the mean seconds per evaluation of one worker."""
    rate = pace(trials)
    if rate:
        return remaining / rate
    secs = [t.user_attrs.get(SECONDS, 0.0) for t in trials if t.state.is_finished()]
    return sum(secs) / len(secs) * remaining if secs else None


def stage_summaries(run: Run) -> list[dict[str, Any]]:
    from optuna.trial import TrialState

    out = []
    for study in run.studies():
        info = study.user_attrs.get(STAGE, {})
        trials = counted_trials(study)
        count = {s: sum(t.state == s for t in trials) for s in TrialState}
        done = count[TrialState.COMPLETE] + count[TrialState.PRUNED] + count[TrialState.FAIL]
        complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
                    and math.isfinite(t.value)]
        best = min((t.value for t in complete), default=None)
        gens = [t.system_attrs[SLOT][0] for t in trials if SLOT in t.system_attrs]
        stopped = study_system_attrs(study).get(STOPPED)
        budget = info.get("budget", 0)
        searched = bool(stopped) or (budget and done >= budget)
        cached = study.user_attrs.get(HELDOUT) or {}  # the best's held-out score, the stage's last work
        scored = not info.get("heldout") or best is None or any(
            t.number == cached.get("trial") and t.value == best for t in complete)
        finished = searched and scored
        out.append({
            "name": study.study_name, "kind": info.get("kind"), "target": info.get("length"),
            "evals": done, "budget": budget, "best_ppl": best,
            "generation": max(gens) if gens else None,
            "running": count[TrialState.RUNNING], "waiting": count[TrialState.WAITING],
            "pruned": count[TrialState.PRUNED], "failed": count[TrialState.FAIL],
            "tokens": sum(int(t.user_attrs.get(TOKENS, 0)) for t in trials if t.state.is_finished()),
            "tokens_saved": tokens_saved(trials),
            "critical_dim": info.get("critical_dim"), "below_critical": info.get("below_critical", "ntk"),
            "mscale": info.get("mscale"), "dtype": study.user_attrs.get(DTYPE),
            "done": bool(finished), "early_stopped_at": stopped,
            "heldout_pending": bool(searched and not scored),
            # the journal holds a best whose file is gone (deleted by hand): resume writes it again
            "best_file_missing": best is not None and info.get("kind") in ("long", "short")
            and not run.best_path(info["kind"], info["length"]).exists(),
            "eta_seconds": None if searched else eta_seconds(trials, max(budget - done, 0)),
            "evals_per_second": pace(trials),
        })
    order = {"long": 0, "short": 1}
    return sorted(out, key=lambda s: (order.get(s["kind"], 2), s["target"] or 0))


def finetune_summaries(run: Run) -> list[dict[str, Any]]:
    """Each fine-tune's step, loss and ETA (from its progress.json), and its model once merged."""
    out = []
    for p in (run.path / "finetune").glob("ft-*/progress.json"):
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError):  # being replaced this instant: the next status reads it
            continue
        length = d.get("length")
        done = (run.model_dir(length) / "config.json").is_file()
        out.append({"name": f"finetune-{length}", "target": length, "step": d.get("step"),
                    "steps": d.get("steps"), "loss": d.get("loss"), "done": done,
                    "checkpoint_step": d.get("checkpoint_step"),
                    "eta_seconds": None if done else d.get("eta_seconds"),
                    "seconds_per_step": _per_step(d),
                    "model": str(run.model_dir(length)) if done else None})
    return sorted(out, key=lambda f: f["target"] or 0)


def _per_step(d: dict[str, Any]) -> float | None:
    """Seconds a step from a progress record: its ETA over the steps it had left."""
    left = (d.get("steps") or 0) - (d.get("step") or 0)
    eta = d.get("eta_seconds")
    return eta / left if isinstance(eta, int | float) and left > 0 else None


def planned(cfg: dict[str, Any]) -> list[str]:
    """The stages a run's config (Run.config) asks for, in the order the driver runs them
    (search/stages.py: long ones ascending, then short ones)."""
    space = cfg.get("space", {})
    return [f"long-{t}" for t in space.get("targets", [])] + [f"short-{t}" for t in space.get("short", [])]


def finished(cfg: dict[str, Any], stages: list[dict[str, Any]], tunes: list[dict[str, Any]]) -> bool:
    """Every stage of the run's config (Run.config) done, and every fine-tune merged."""
    after = set((cfg.get("finetune") or {}).get("after", []))
    merged = {f["target"] for f in tunes if f["done"]}
    return set(planned(cfg)) <= {s["name"] for s in stages if s["done"]} and after <= merged


def driver_line(run: Run, driver: dict | None, done: bool = False) -> str:
    """One line on the run's driver, from its lease (runs/lease.py holder)."""
    if driver is None:
        return ("driver: none running (the run is finished)" if done else
                "driver: none running (an unfinished run continues with: longrope resume "
                f"{quote(str(run.path))})")
    if driver["state"] == "unreadable":
        return "driver: run.lock is unreadable; a resume takes it over"
    who, age = f"pid {driver['pid']} on {driver['host']}", driver["heartbeat_age"]
    if driver["state"] == "gone":
        return f"driver: {who} is gone (its lock remains; a resume takes it at once)"
    if driver["state"] == "silent":
        silent = f"silent for {age:.0f} s" if age is not None else "silent (its lock has no heartbeat)"
        return (f"driver: {who} {silent} (> its --lock-timeout {driver['timeout']:g} s: dead "
                "or hung; a resume takes it over)")
    late = f" (late: renewed every {HEARTBEAT:g} s; stopped or stalled?)" if age > 3 * HEARTBEAT else ""
    return f"driver: {who}, heartbeat {age:.0f} s ago{late}"


def render_status(run: Run, as_json: bool) -> str:
    stages, tunes = stage_summaries(run), finetune_summaries(run)
    cfg, started = run.config(), {s["name"] for s in stages}
    not_started = [n for n in planned(cfg) if n not in started]  # no study yet
    driver = holder(run.path / LOCK)
    if as_json:
        page = report_path(run)
        return json.dumps({"run": str(run.path), "stages": stages, "not_started": not_started,
                           "finetunes": tunes, "time": time.time(), "driver": driver,
                           "report": None if page is None else str(page)})
    lines = [f"run {run.path}", driver_line(run, driver, finished(cfg, stages, tunes))]
    # no live driver: the ETAs are for a resume, and a fine-tune goes on from its checkpoint
    stopped = "" if driver is not None and driver["state"] == "live" else " once resumed"
    if not stages and not not_started:
        lines.append("no stage started yet")
    for s in stages:
        if s["kind"] is None and not s["evals"] + s["running"] + s["waiting"]:
            # a driver stopped between the stage's study and its first record: "0/0 evals ... ETA -"
            lines.append(f"{s['name']:>14}: not started yet (no evaluation), starts{stopped or ' soon'}")
            continue
        best = f"{s['best_ppl']:.4f}" if s["best_ppl"] is not None else "-"
        how = "at the measured pace" if s["evals_per_second"] else "one worker"
        early = f" (stopped early at generation {s['early_stopped_at']})" if s["early_stopped_at"] else ""
        gone = f", its best file best/{s['name']}.json is missing (resume writes it again)" \
            if s["best_file_missing"] else ""
        eta = f"done{early}{gone}" if s["done"] else (f"searched, its best's held-out score to come{stopped}"
                                         if s.get("heldout_pending") else
                                         f"ETA {s['eta_seconds'] / 60:.1f} min ({how}){stopped}"
                                         if s["eta_seconds"] is not None else "ETA -")
        saved = f" (early abort saved {_count(s['tokens_saved'])})" if s["tokens_saved"] else ""
        crit = "off" if s["critical_dim"] is None else s["critical_dim"]
        if s["critical_dim"] is not None and s["below_critical"] == "search":
            crit = f"{crit} (pairs below searched)"
        mscale = ", mscale searched" if s["mscale"] == "search" else ""
        mscale += f", {s['dtype']}" if s["dtype"] else ""  # what its candidates are scored in
        gen = "-" if s["generation"] is None else s["generation"]  # none yet, or a sampler without
        running = f"running {s['running']}" if not stopped or not s["running"] else \
            f"left running {s['running']} (re-queued on resume)"  # by a driver that is no more
        lines.append(f"{s['name']:>14}: {s['evals']}/{s['budget']} evals, best ppl {best}, "
                     f"generation {gen}, {running}, pruned {s['pruned']}, "
                     f"failed {s['failed']}, tokens {_count(s['tokens'])}{saved}, critical dim {crit}"
                     f"{mscale}, {eta}")
    for name in not_started:  # listed too: a run cut off in its first stage showed no other
        lines.append(f"{name:>14}: not started yet{' (starts once resumed)' if stopped else ''}")
    for f in tunes:
        secs = f["eta_seconds"] or 0
        if stopped and f["seconds_per_step"] and f["checkpoint_step"] is not None:  # a resume restarts there
            secs = f["seconds_per_step"] * (f["steps"] - f["checkpoint_step"])
        eta = f"done, model {f['model']}" if f["done"] else f"ETA {secs / 60:.1f} min{stopped}"
        ckpt = f" (checkpoint at step {f['checkpoint_step']})" if f["checkpoint_step"] is not None and \
            not f["done"] and f["checkpoint_step"] != f["step"] else ""
        lines.append(f"{f['name']:>14}: step {f['step']}/{f['steps']}{ckpt}, loss {f['loss']:.4f} "
                     f"(last step), {eta}")
    page = report_path(run)
    lines.append(f"report: {page} (refresh: longrope report {quote(str(run.path))})" if page else
                 f"report: longrope report {quote(str(run.path))}")
    return "\n".join(lines)


def _count(n: int) -> str:
    """A token count for people: 1234 -> 1.2k, 3456789 -> 3.5M."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def unfinished(run: Run, records: list[BestRecord], summaries: list[dict[str, Any]]) -> list[str]:
    """A warning for each record whose stage is still short of its budget: an interrupted run's
    best file holds the best so far (generation 0's at first), not the search's result. And for
    a longer long stage or a short stage begun with no result yet: the export has none of its
    factors. `summaries`: stage_summaries(run), which the caller has read already."""
    stages = {(s["kind"], s["target"]): s for s in summaries}
    resume = f"`longrope resume {quote(str(run.path))}`"

    def no_result(name: str, s: dict[str, Any] | None, lost: str, does: str) -> str:
        if s and s["best_file_missing"]:
            return f"stage {name}'s best file is missing (deleted?): {lost}; {resume} writes it again"
        done = f"{s['evals']}/{s['budget']} evaluations" if s else "not started"
        return f"stage {name} has no result yet ({done}): {lost}; {resume} {does}"

    out = []
    for r in records:
        s = stages.get((r.kind, r.target_length))
        if s is not None and s.get("heldout_pending"):
            out.append(f"stage {s['name']} is searched but its best's held-out score is still to come: "
                       f"these factors are its result; {resume} scores it")
        elif s is not None and not s["done"]:
            out.append(f"stage {s['name']} is unfinished ({s['evals']}/{s['budget']} evaluations): these "
                       f"are its best factors so far; {resume} finishes it")
    longest = max((r.target_length for r in records if r.kind == "long"), default=None)
    for t in run.config().get("space", {}).get("targets", []):  # a longer target, not searched yet
        if longest and isinstance(t, int) and t > longest and not run.best_path("long", t).exists():
            out.append(no_result(f"long-{t}", stages.get(("long", t)),
                                 f"this export reaches {longest} tokens, not {t}", "searches it"))
    if not any(r.kind == "short" for r in records):
        for s in summaries:
            if s["kind"] == "short" and s["target"] and not run.best_path("short", s["target"]).exists():
                out.append(no_result(s["name"], s, "the export has no short factors (λ = 1 up to L0)",
                                     "searches them"))
    return out
