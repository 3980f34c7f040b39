"""The driver: ask -> dispatch -> tell, stage after stage, into the run's journal.

`run_search` is the whole of `longrope search` / `resume`: it checks the
config, model, data and workers before the run directory is created or
changed, then drives the stages under the run's lock.

Crash safety: every result is in the journal the moment it is told. A trial
left RUNNING by a dead driver (or in flight at Ctrl-C) is marked failed and
its exact parameters re-queued with its slot, so the resumed run evaluates the
same candidates in the same generations as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

import optuna
from optuna.trial import TrialState

from longrope.objectives.perplexity import COMPLETE, PRUNED
from longrope.runs import BestRecord, Run, vocab
from longrope.runs.lease import LOCK_TIMEOUT, Lease, LeaseLost
from longrope.runs.optuna_io import frozen_trial
from longrope.runs.rundir import STORAGE_ERRORS, rdb_storage
from longrope.spaces import RescaleFactors, UserError
from longrope.spaces.files import uninterrupted

from .backends import Job
from .config import RunConfig, defining_diff, dumps
from .finetuning import finetune_stage
from .plan import Plan
from .proposers import Proposer, best_trial, make_proposer
from .stagecheck import best_record, bred_from, cached_heldout, check_resumable, check_stage, heldout_text
from .stages import Stage, initial_factors
from .stopping import interrupted, interruption, requeue_running, requeue_strays, signals_as_interrupt


def run_search(cfg: RunConfig, run_dir: str, resume: bool = False, progress: bool = True,
               backend=None, lock_timeout: float = LOCK_TIMEOUT) -> dict[str, RescaleFactors | None]:
    """Search (or resume) `cfg` into `run_dir`; returns each stage's best factors by stage name.

    Everything is validated (config against an existing run, model, data, seed files, the
    workers) before the run directory is created or changed. An existing run with the same
    search-defining config is resumed; with `resume`, `run_dir` must already be a run. Ctrl-C
    and SIGTERM (what preemption and `scancel` send) re-queue the running trials, release the
    lock and exit 130 and 143. A backend made here is closed at the end; a given one is checked
    (once) and left open for its owner. The run's lock is a lease (runs/lease.py): a driver
    preempted elsewhere is taken over once its heartbeat is `lock_timeout` seconds old.
    """
    existing, on_workers = Run.is_run(run_dir), None
    if existing:
        run = Run.open(run_dir)
        on_workers = check_resumable(run, cfg, run_dir)
        run.check_writable()
        run.check_journal()
    elif resume:
        Run.open(run_dir)  # says why it is not a run
    else:
        Run.check_new(run_dir)
    lease = Run(run_dir).lock(lock_timeout)  # a bad --lock-timeout: refused before the workers load,
    if existing:
        lease.precheck()  # and so is a live driver's run
    if cfg.search.storage:  # a database that cannot be opened, before the run directory is made
        held = [s.study_name for s in rdb_storage(cfg.search.storage).get_all_studies()]
        if held and not existing:  # its studies are named by stage alone: two runs would share them
            raise UserError(f"search.storage already holds studies ({', '.join(held[:3])}"
                            f"{', ...' if len(held) > 3 else ''}), another run's: give each run a database "
                            "of its own (or resume that run)")
    plan = Plan(cfg, backend)
    with signals_as_interrupt() as seen:
        try:
            try:
                plan.start_backend()
            except KeyboardInterrupt:  # while Ray starts or the workers load: nothing written yet
                raise interrupted(seen, " while the workers started; nothing of the run was written") \
                    from None
            if on_workers is not None:  # weights only the workers see: checked before the run changes
                on_workers(plan.backend)
            return _drive(cfg, run_dir, existing, plan, progress, lease, seen)
        except OSError as e:  # the journal, the lease or the events log on a full disk
            failed = Run(run_dir).write_failed(e)
            if failed is None:
                raise
            raise failed from None
        finally:
            plan.close()  # a refused lock or run directory: the workers stop all the same


def _drive(cfg: RunConfig, run_dir: str, existing: bool, plan: Plan, progress: bool, lease: Lease,
           seen: list[int]) -> dict[str, RescaleFactors | None]:
    """run_search once its workers are up: the run made (or opened) and searched under its lease."""
    results = None
    try:  # a stale lock is watched for two heartbeats first: a signal may come meanwhile
        run = Run.open(run_dir) if existing else Run.create(run_dir, dumps(cfg))
        lease.acquire()
        with lease:  # run_search's, prechecked before the workers started; taken just above
            try:
                results = _search(cfg, run, run_dir, existing, plan, progress, lease, seen)
            finally:
                plan.close()  # before the lock is released
        return results
    except KeyboardInterrupt:  # not inside _search's own handling: before it, or once it ended
        lease.release()  # one the signal caught as acquire ended (released already: nothing to do)
        raise interrupted(seen, " after the search ended" if results is not None else
                          " while taking the run's lock; nothing was searched") from None


def _search(cfg: RunConfig, run: Run, run_dir: str, existing: bool, plan: Plan, progress: bool,
            lease: Lease, seen: list[int]) -> dict[str, RescaleFactors | None]:
    """_drive's search, under the lease: a signal re-queues what ran, and says how to resume."""
    try:
        with uninterrupted():  # the start's writes; a signal among them is raised here, once done
            if run.clear_stale_journal_lock():
                run.event("cleared a journal lock left by a killed driver")
            run.clear_leftovers()
            run.event(f"driver start (pid {os.getpid()}, {'resume' if existing else 'new run'})")
            changed = defining_diff(run.config(), cfg.to_dict(), every=True) if existing else []
            if changed:  # the budget or workers this driver runs with: a later resume's and status's too
                run.set_config(dumps(cfg))
                run.event(f"config: {'; '.join(changed)}")
        return Driver(cfg, run, progress=progress, plan=plan, lease=lease).run_all()
    except (KeyboardInterrupt, Exception) as e:
        stop = interruption(e, seen, lease, run, run_dir)
        if stop is None:
            raise
        raise stop from None


class Driver:
    """Runs a plan's stages into a run. `backend`: use this one instead of making one
    (it is still checked); `plan`: one already checked by `run_search`; `lease`: the run's
    lock, checked before each write to the journal (a driver taken over stops there)."""

    def __init__(self, cfg: RunConfig, run: Run, progress: bool = True, backend=None,
                 plan: Plan | None = None, lease: Lease | None = None):
        if plan is not None and backend is not None:
            raise ValueError("give the backend to the plan, not to both")
        self.cfg, self.run, self.progress, self.lease = cfg, run, progress, lease
        self.plan = plan if plan is not None else Plan(cfg, backend)
        self.geometry, self.stages = self.plan.geometry, self.plan.stages
        self.inflight: dict[int, tuple[optuna.Study, Any, Proposer]] = {}
        self.active: tuple[optuna.Study, Proposer] | None = None  # the stage under way

    @property
    def backend(self):
        return self.plan.backend

    def start_backend(self) -> None:
        self.plan.start_backend()

    def run_all(self) -> dict[str, Any]:
        """Every stage (and fine-tune), in order. Optuna's per-trial log lines are silenced while
        it runs (the events log and the bar say more) and its log level restored after."""
        level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            return self._run_all()
        finally:
            optuna.logging.set_verbosity(level)

    def _run_all(self) -> dict[str, Any]:
        note = self.run.repair_journal()
        if note:
            self.run.event(note)
            print(f"warning: {note}", file=sys.stderr)
        storage = self.run.storage(self.cfg.search.storage)
        budget = self.cfg.budget()
        for study in self.run.studies():  # a resume's new budget, for `status` before a stage is reached
            info = study.user_attrs.get(vocab.STAGE)
            if info and info.get("budget") != budget:
                self.check_lease()
                study.set_user_attr(vocab.STAGE, {**info, "budget": budget})
        results: dict[str, Any] = {}
        previous: RescaleFactors | None = None
        try:
            for stage in self.stages:
                self.check_lease()  # the study's creation and its attributes are writes too
                self.start_backend()  # once, and again after a fine-tune switched the model
                self.check_lease()  # again: the workers may have taken minutes to load
                study = optuna.create_study(study_name=stage.name, storage=storage, direction="minimize",
                                            load_if_exists=True)
                prev = bred_from(self.run, stage, study, previous) if stage.kind == "long" else None
                initial = initial_factors(self.cfg, stage, self.geometry, prev)
                proposer = make_proposer(self.cfg, stage, initial, lag=self.backend.capacity)
                study.sampler = proposer.sampler
                results[stage.name] = self.run_stage(stage, study, proposer)
                if stage.kind == "long" and results[stage.name] is not None:
                    previous = results[stage.name]
                if stage.kind == "long" and stage.length in self.cfg.finetune.after:
                    self.check_lease()
                    self.plan.use_model(lambda length=stage.length: finetune_stage(
                        self.run, self.plan.spec, self.cfg.finetune, self.cfg.workers, length, self.progress,
                        check=self.lease.ticket() if self.lease else None))
        except (LeaseLost, OSError) as e:
            # Write nothing more when another driver holds the run (its resume re-queues what ran
            # here) or the disk is full (a re-queue could land after a torn line; run_search words
            # it, and resume re-queues as after kill -9); any other OSError is a bug's, left as is.
            if isinstance(e, LeaseLost) or e.errno in STORAGE_ERRORS:
                self.inflight.clear()
                self.active = None
            raise
        finally:
            self.abandon_inflight()
        return results

    def check_lease(self) -> None:
        """Before a write to the run: stop (LeaseLost) if another driver has taken it over."""
        if self.lease is not None:
            self.lease.check()

    def holds_lease(self) -> bool:
        """False once another driver has taken the run over (a lock unreadable just now: True)."""
        try:
            self.check_lease()
        except LeaseLost:
            return False
        return True

    def abandon_inflight(self) -> None:
        """On interruption: hand in-flight trials back to the queue (resume re-runs them). The
        stage under way counts even with nothing registered in flight: an interrupt between
        `study.ask` and the registration leaves a RUNNING trial that only the study knows."""
        if not self.holds_lease():  # taken over: what ran here is the new holder's to re-queue
            self.inflight.clear()
            self.active = None
            return
        studies = {id(s): (s, p) for s, _, p in self.inflight.values()}
        if self.active is not None:
            studies[id(self.active[0])] = self.active
        for study, proposer in studies.values():
            requeue_running(study, proposer)
        self.inflight.clear()

    def run_stage(self, stage: Stage, study: optuna.Study, proposer: Proposer) -> RescaleFactors | None:
        from tqdm import tqdm

        sp = stage.space
        study.set_user_attr(vocab.STAGE, {"kind": stage.kind, "length": stage.length,
                                          "budget": stage.budget, "sampler": self.cfg.search.sampler,
                                          "critical_dim": sp.critical_dim,
                                          "below_critical": "search" if sp.search_below else "ntk",
                                          "mscale": "search" if sp.searches_mscale else sp.mscale,
                                          # status calls it done once its best's held-out score is cached
                                          "heldout": bool(self.cfg.data.heldout_docs)})
        check_stage(self.backend, self.cfg, self.run, stage, study)
        self.active = (study, proposer)
        n = requeue_running(study, proposer)
        if n:
            self.run.event(f"{stage.name}: re-queued {n} trial(s) left running by an interrupted driver")
        proposer.start(study)
        done = sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished()
                   and not t.system_attrs.get(vocab.REQUEUED))
        crit = "off" if sp.critical_dim is None else sp.critical_dim
        self.run.event(f"{stage.name}: start, {done}/{stage.budget} evaluations done, "
                       f"λmax {sp.lambda_max:g}, critical dim {crit}, "
                       f"mscale {'searched from ' if sp.searches_mscale else ''}{sp.mscale:.4f}")
        best = best_trial(study)
        self.refresh_best(stage, study, best, proposer)
        with tqdm(total=stage.budget, initial=min(done, stage.budget), desc=stage.name, unit="eval",
                  disable=not self.progress, file=sys.stderr, dynamic_ncols=True) as bar:
            # closed on the way out too, so a Ctrl-C's line starts a line of its own
            best = self.evaluate_stage(stage, study, proposer, bar, best)
            if (why := proposer.stalled(study)) is not None:
                raise UserError(f"{stage.name} cannot go on short of its {stage.budget} evaluations: {why} "
                                "(a journal that lost records); the best so far is in best/; restore the "
                                "journal from a copy or start a new --run-dir")
            if best is None:
                self.run.event(f"{stage.name}: no complete evaluation")
                return None
            factors = proposer.factors(best)
            if self.cfg.data.heldout_docs:  # minutes to hours at long L: the bar says what it waits for
                bar.set_postfix_str(f"best ppl {best.value:.4f}; scoring it on the held-out documents")
            self.score_heldout(stage, study, best, factors, proposer)
            bar.set_postfix_str(f"best ppl {best.value:.4f}")
        self.run.event(f"{stage.name}: done ({proposer.stop_reason(study)}), best ppl {best.value:.4f} "
                       f"(trial {best.number})")
        return factors

    def evaluate_stage(self, stage: Stage, study: optuna.Study, proposer: Proposer, bar, best):
        """Ask, dispatch and tell until the proposer has nothing more to ask and no job is out;
        the stage's best trial at the end (`best`: at the start)."""
        if best is not None:
            bar.set_postfix_str(f"best ppl {best.value:.4f}")
        while True:
            # the lease before ready(), which may write the early stop into the journal
            while self.backend.free() > 0 and self.check_lease() is None and proposer.ready(study):
                trial = study.ask(proposer.distributions())
                job = Job(trial.number, proposer.factors(trial), stage.length,
                          proposer.threshold(study, frozen_trial(study, trial)))
                self.inflight[trial.number] = (study, trial, proposer)
                self.backend.submit(job)
            if not self.backend.busy():
                if n := requeue_strays(study, proposer, self.check_lease):
                    self.run.event(f"{stage.name}: re-queued {n} trial(s) left running by a driver that had "
                                   "lost the run")
                    continue
                break
            key, ev = self.backend.wait()
            _, trial, _ = self.inflight.pop(key)
            self.tell(study, trial, ev)
            bar.update(1)
            new_best = best_trial(study)
            if new_best is not None and (best is None or new_best.number != best.number):
                best = new_best
                bar.set_postfix_str(f"best ppl {best.value:.4f}")
                self.write_best(stage, study, best, None, proposer)
            g = proposer.generation_done(study, trial)
            if g is not None:
                self.log_generation(stage, study, g, proposer)
        return best

    def tell(self, study: optuna.Study, trial, ev) -> None:
        self.check_lease()
        trial.set_user_attr(vocab.DOC_NLL, list(ev.doc_nll))
        trial.set_user_attr(vocab.TOKENS, ev.tokens)
        trial.set_user_attr(vocab.SECONDS, round(ev.seconds, 4))
        if ev.extra.get("tail_ppl") is not None:
            trial.set_user_attr(vocab.TAIL_PPL, ev.extra["tail_ppl"])
        if ev.status == COMPLETE:
            study.tell(trial, ev.ppl)
        elif ev.status == PRUNED:
            trial.set_user_attr(vocab.REASON, ev.reason)
            trial.report(ev.ppl, step=len(ev.doc_nll))
            study.tell(trial, state=TrialState.PRUNED)
        else:
            trial.set_user_attr(vocab.REASON, ev.reason)
            study.tell(trial, state=TrialState.FAIL)
            self.run.event(f"trial {trial.number} failed: {ev.reason}")

    def log_generation(self, stage: Stage, study, g: int, proposer: Proposer) -> None:
        trials = [t for t in study.get_trials(deepcopy=False)
                  if t.system_attrs.get(vocab.SLOT, [None])[0] == g
                  and not t.system_attrs.get(vocab.REQUEUED)]
        pruned = sum(t.state == TrialState.PRUNED for t in trials)
        failed = sum(t.state == TrialState.FAIL for t in trials)
        best = best_trial(study)
        cut = proposer.sampler.threshold(study, g + 1) if hasattr(proposer.sampler, "threshold") else None
        cut_s = f"{cut:.4f}" if cut is not None and math.isfinite(cut) else "-"
        self.run.event(f"{stage.name} gen {g}: {len(trials)} evaluated, {pruned} pruned, {failed} failed; "
                       f"best {best.value if best else float('nan'):.4f}, parent cut-off {cut_s}")

    def write_best(self, stage: Stage, study, trial, heldout: float | None, proposer: Proposer) -> None:
        self.run.write_best(best_record(self.cfg, self.run, stage, self.geometry, study, trial,
                                        proposer.factors(trial), heldout, self.plan.spec.model.path))

    def refresh_best(self, stage: Stage, study, best, proposer: Proposer) -> None:
        """A driver killed between a tell and its write_best left best/ one best behind, and the
        stage's end (which rewrites it) may be hours away: write it as the stage resumes, with the
        held-out score cached for that trial if any."""
        if best is None:
            return
        try:
            written = BestRecord.load(self.run.best_path(stage.kind, stage.length))
        except UserError:  # none yet, or a damaged one: rewritten
            written = None
        if written is not None and written.trial == best.number:
            return
        text = heldout_text(self.backend, stage) if self.cfg.data.heldout_docs else None
        self.write_best(stage, study, best, cached_heldout(study, best.number, text), proposer)

    def score_heldout(self, stage: Stage, study, best, factors: RescaleFactors, proposer: Proposer) -> None:
        self.check_lease()
        if not self.cfg.data.heldout_docs:
            self.write_best(stage, study, best, None, proposer)
            return
        text = heldout_text(self.backend, stage)
        ppl = cached_heldout(study, best.number, text)
        if ppl is None and (study.user_attrs.get(vocab.HELDOUT) or {}).get("trial") == best.number:
            self.run.event(f"{stage.name}: the held-out text changed since its best was scored on it")
            print(f"note: {stage.name}: the held-out text changed since the best was scored on it (an edited "
                  "file, a new dataset revision?); scoring it again", file=sys.stderr)
        if ppl is None:
            ppl = self.evaluate_heldout(stage, factors)
            self.check_lease()  # minutes to hours at long L: a driver taken over meanwhile stops here
            if ppl is not None:  # a failed one is tried again by the next driver
                study.set_user_attr(vocab.HELDOUT, {"trial": best.number, "ppl": ppl, "text": text})
        self.write_best(stage, study, best, ppl, proposer)

    def evaluate_heldout(self, stage: Stage, factors: RescaleFactors) -> float | None:
        """The best factors' held-out perplexity; None (said, and in events.log) when scoring
        failed, as when the held-out documents kill their workers twice."""
        ev = self.backend.evaluate_pool(factors, stage.length, "heldout")
        if ev.ok:
            return ev.ppl
        self.run.event(f"{stage.name}: held-out scoring failed ({ev.reason}); best file without it")
        print(f"warning: {stage.name}: the best factors' held-out scoring failed ({ev.reason}); the best "
              "file has no held-out perplexity (a resume tries again)", file=sys.stderr)
        return None
