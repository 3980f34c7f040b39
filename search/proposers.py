"""Proposers: what the driver asks of a sampler (`Proposer`), and the table of samplers.

The driver only needs: the distributions to ask with, whether a new trial may
be asked now, the factors of a trial, its early-abort threshold, and whether
the stage is finished. The evolution answers from its slots and generations;
CMA-ES/TPE/random from a plain evaluation count. `SAMPLERS` names them all;
the config's search.sampler choices are its keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from longrope.objectives.pruning import Cutoff
from longrope.runs.optuna_io import (
    fail_trial,
    frozen_trial,
    set_study_system_attr,
    set_trial_system_attr,
    study_system_attrs,
)
from longrope.runs.vocab import DOC_NLL, LAG, REQUEUED, SLOT, STOPPED
from longrope.spaces import RescaleFactors

from .alternatives import DrawSeeded, StepParametrisation
from .operators import SpaceExhausted
from .sampler import LongRoPESampler, slot_of, to_params

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

    from .schema import RunConfig
    from .stages import Stage


class Proposer(Protocol):
    """What the driver asks of a sampler, for one stage (one study).

    The driver asks `study.ask(distributions())` while `ready(study)`, scores
    `factors(trial)` with the early-abort cut-off `threshold(study, frozen)`,
    tells the result, and after each tell asks `generation_done` (to log a
    generation). On start it fails and re-queues trials left RUNNING by a dead
    driver (`requeue_params`), then calls `start`. The stage ends when
    nothing is ready and nothing is in flight.
    """

    sampler: optuna.samplers.BaseSampler  # the study's sampler; the driver creates the study with it

    def distributions(self) -> dict[str, BaseDistribution]:
        """The parameters `study.ask` samples (the same for every trial of the stage)."""
        ...

    def ready(self, study: optuna.Study) -> bool:
        """May a new trial be asked now? False when the budget is spent, the stage stopped early,
        or (evolution) the next generation waits on trials still in flight."""
        ...

    def stopped(self, study: optuna.Study) -> bool:
        """Did the stage stop early (before its budget)?"""
        ...

    def stop_reason(self, study: optuna.Study) -> str:
        """How the stage ended, for the events log: the budget, or why it stopped early."""
        ...

    def threshold(self, study: optuna.Study, trial: FrozenTrial) -> Cutoff | None:
        """When to stop scoring this trial (stored form, after ask); None: score fully."""
        ...

    def factors(self, trial: optuna.Trial | FrozenTrial) -> RescaleFactors:
        """The candidate a trial's parameters stand for."""
        ...

    def generation_done(self, study: optuna.Study, trial: optuna.Trial) -> int | None:
        """The generation the just-told `trial` completed, if it did (for the events log)."""
        ...

    def start(self, study: optuna.Study) -> None:
        """At the stage's start or resume: queue the seed candidates, if this sampler takes them
        from the queue, and pick up where the sampler left off."""
        ...

    def requeue_params(self, trial: FrozenTrial) -> dict[str, Any] | None:
        """The parameters to re-queue for a trial a dead driver left RUNNING; None: do not."""
        ...

    def stalled(self, study: optuna.Study) -> str | None:
        """Why the stage cannot go on short of its budget when nothing is ready and nothing is in
        flight (a journal whose generations do not add up); None: it ended as it should."""
        ...


class GAProposer:
    def __init__(self, cfg: RunConfig, stage: Stage, seeds: list[RescaleFactors]):
        se = cfg.search
        self.sampler = LongRoPESampler(
            stage.space, se.seed, se.population, se.parents, se.mutants, se.crossovers,
            se.mutation_prob, se.crossover_prob, se.sigma, seeds, stream=stage.length,
        )
        self.budget = stage.budget
        self.patience, self.min_improvement = se.patience, se.min_improvement
        self.pruner, self.pruner_p, self.pruner_startup = se.pruner, se.pruner_p, se.pruner_startup
        self._thresholds: dict[int, Cutoff | None] = {}

    def distributions(self):
        return self.sampler.distributions()

    def _index(self, slot) -> int:
        return self.sampler.slots_before(slot[0]) + slot[1]

    def stopped(self, study: optuna.Study) -> bool:
        return bool(study_system_attrs(study).get(STOPPED))

    def stop_reason(self, study: optuna.Study) -> str:
        g = study_system_attrs(study).get(STOPPED)
        if not g:
            return "budget reached"
        if self._should_stop(study, g):  # else ready() found generation g could not be bred
            return f"early stop at generation {g}"
        return f"stopped at generation {g}, which has no candidate not already scored: the space is " \
               "nearly exhausted (a coarse space.step, a short stage, deployable)"

    def _exhausted(self, study: optuna.Study, g: int) -> bool:
        """Can generation g not be bred (every child drawn was scored before)? A function of the
        generations before it, so a resume finds the same."""
        try:
            self.sampler.generation(study, g)
        except SpaceExhausted:
            return True
        return False

    def stalled(self, study: optuna.Study) -> str | None:
        g, j = self.sampler.next_slot(study)
        if self.stopped(study) or self._index((g, j)) >= self.budget or self.sampler.ready(study):
            return None
        held = sum(1 for t in self.sampler.owned(study) if t.system_attrs[SLOT][0] < g)
        return (f"generation {g} waits on generations before it, whose {self.sampler.slots_before(g)} "
                f"slots are held by {held} trials")

    def _should_stop(self, study: optuna.Study, g: int) -> bool:
        """Best improved by less than min_improvement over the last `patience` generations, or not
        at all: with min_improvement 0 any gain resets patience and a flat best stops (it ran on to
        the budget). Patience 0: never (it compared a generation's parents with themselves)."""
        if not self.patience or g <= self.patience:
            return False
        now = self.sampler.parents(study, g)
        before = self.sampler.parents(study, g - self.patience)
        if not now or not before:
            return False
        gain = (before[0].value - now[0].value) / before[0].value
        return gain <= 0 or gain < self.min_improvement

    def ready(self, study: optuna.Study) -> bool:
        slot = self.sampler.next_slot(study)
        if self._index(slot) >= self.budget or self.stopped(study) or not self.sampler.ready(study):
            return False
        g = slot[0]
        if slot[1] == 0 and g > 0 and (self._should_stop(study, g) or self._exhausted(study, g)):
            set_study_system_attr(study, STOPPED, g)
            return False
        return True

    def threshold(self, study: optuna.Study, trial) -> Cutoff | None:
        g = trial.system_attrs[SLOT][0]  # a FrozenTrial, read after before_trial set the slot
        if self.pruner == "none":
            return None
        if g not in self._thresholds:
            worst = self.sampler.cutoff_parent(study, g)
            self._thresholds[g] = None if worst is None else Cutoff(
                worst.value, self.pruner, tuple(worst.user_attrs.get(DOC_NLL, ())), self.pruner_p,
                self.pruner_startup)
        return self._thresholds[g]

    def factors(self, trial) -> RescaleFactors:
        return self.sampler.factors(trial)

    def generation_done(self, study: optuna.Study, trial) -> int | None:
        """The generation this trial's completion finished, if it did."""
        g = frozen_trial(study, trial).system_attrs[SLOT][0]
        end = self.sampler.slots_before(g + 1)
        finished = sum(1 for t in self.sampler.owned(study) if t.state in
                       (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
        return g if finished == min(end, self.budget) else None

    def start(self, study: optuna.Study) -> None:
        """Generation 0 starts with the seeds itself, and every draw is a function of (seed, slot):
        nothing to queue or restore. An early stop is the patience rule's verdict under the config
        it ran with; patience and min_improvement may change in a run, so a resume asks the rule
        again and goes on when it would no longer stop (unchanged, it still does: exact resume)."""
        g = study_system_attrs(study).get(STOPPED)
        if g and not self._should_stop(study, g):  # an exhausted space: ready() stops it again
            set_study_system_attr(study, STOPPED, None)
        self.requeue_lost(study)

    def requeue_lost(self, study: optuna.Study) -> int:
        """Queue again the slot of a re-queued trial whose copy is gone. A re-queue writes the
        copy before the mark, so a marked trial whose slot no other trial holds lost its copy's
        one journal line (a WAITING CREATE_TRIAL, which no later record names: `--repair` drops
        it torn without a word). Unqueued, that slot would never be scored, and a fresh ask
        would take another's. The queue stays in slot order (the sampler reads the next slot off
        its front: the budget and the early stop), so the copies waiting behind a lost slot are
        failed and queued again after it. A journal resumed before this existed filled the gap
        with a second copy of another slot: nothing is queued there (it would overfill a
        generation)."""
        slotted = [(t, s) for t in study.get_trials(deepcopy=False) if (s := slot_of(t)) is not None]
        live = [s for t, s in slotted if not t.system_attrs.get(REQUEUED)]
        held = set(live)
        lost: dict[tuple, dict] = {}  # slot -> its candidate, as it ran or was queued
        for t, s in slotted:
            if t.system_attrs.get(REQUEUED) and s not in held:
                lost[s] = lost.get(s) or t.params or t.system_attrs.get("fixed_params", {})
        if not lost or len(live) != len(held):  # a slot held twice: an older resume filled the gap
            return 0
        gone, first = len(lost), min(lost)
        for t, s in slotted:
            if t.state != TrialState.WAITING:
                continue
            marked = t.system_attrs.get(REQUEUED)  # marked and still waiting: killed here before
            if not marked and s < first:
                continue  # ahead of the gap: stays where it is in the queue
            if not marked:  # behind the gap: queued again after it
                lost[s] = t.system_attrs.get("fixed_params", {})  # the candidate it was queued with
                set_trial_system_attr(study, t, REQUEUED, True)
            fail_trial(study, t)
        for s in sorted(lost):
            study.enqueue_trial(lost[s], user_attrs={SLOT: list(s)}, skip_if_exists=False)
        return gone

    def requeue_params(self, trial) -> dict | None:
        """A dead driver's trial, to re-queue with its slot; None for one killed inside its ask
        before the sampler gave it a slot: it held no candidate yet, and a slotless copy in the
        queue would take the slot of another re-queued copy (scored twice, the next never)."""
        if SLOT not in trial.system_attrs and SLOT not in trial.user_attrs:
            return None
        return trial.params or {}


class OptunaProposer:
    """cmaes | tpe | random over the monotone step parametrisation."""

    def __init__(self, cfg: RunConfig, stage: Stage, seeds: list[RescaleFactors]):
        self.param = StepParametrisation(stage.space, seeds)
        self.name, self.seed = cfg.search.sampler, cfg.search.seed + stage.length
        self.sampler = DrawSeeded(self.name, self.seed, len(self.param.distributions()))
        self.budget = stage.budget
        self.seeds = seeds
        self.lag = 1  # candidates out at once, drawn without each other's scores (make_proposer)

    def distributions(self):
        return self.param.distributions()

    def _counted(self, study):
        return [t for t in study.get_trials(deepcopy=False) if not t.system_attrs.get(REQUEUED)]

    def _started(self, study) -> int:
        """Trials asked for: a queued seed (WAITING) is not one yet."""
        return sum(t.state != TrialState.WAITING for t in self._counted(study))

    def ready(self, study) -> bool:
        """Below budget in trials started (counted with the queued seeds, a stage with as many
        seeds as its budget scored nothing and read done), and the next draw's history scored."""
        return self._started(study) < self.budget and self.sampler.may_draw(study)

    def stopped(self, study) -> bool:
        return False

    def stop_reason(self, study) -> str:
        return "budget reached"

    def stalled(self, study) -> str | None:
        """Why the stage stopped short of its budget with nothing running: the next draw waits on
        trials no driver scores (a journal that lost records)."""
        if self._started(study) < self.budget and not self.sampler.may_draw(study):
            return (f"draw {self.sampler.draw(study)} waits on trials before it (lag {self.sampler.lag}) "
                    "that are neither finished nor running")
        return None

    def threshold(self, study, trial) -> Cutoff | None:
        return None

    def factors(self, trial) -> RescaleFactors:
        return self.param.factors(trial.params)

    def generation_done(self, study, trial) -> int | None:
        return None

    def start(self, study: optuna.Study) -> None:
        """Queue the seeds, also on resume, each unless a trial has its parameters: a driver
        killed while it queued them left the rest out for good. Seeds alike (two methods clipped
        to one λmax) are queued once, as the evolution scores them once: a resume could not tell
        the second from the first. (The sampler's stream needs nothing here: DrawSeeded.)"""
        for s in self.seeds[:self.budget]:  # a budget below the seeds scores the first of them
            study.enqueue_trial(self.param.params(s), skip_if_exists=True)
        if LAG not in study.user_attrs:  # the stage keeps its first lag: a resume on other workers too
            study.set_user_attr(LAG, self.lag)
        self.sampler.lag = int(study.user_attrs[LAG])

    def requeue_params(self, trial) -> dict | None:
        """A queued trial (a seed, a re-queued copy) is queued again with its own parameters, also
        when killed before they were all written (start() would take its half-written copy for
        the seed and skip it: lost). A drawn one killed inside its ask, before its last parameter,
        is not: its draw is free, and drawn again it is the same candidate (DrawSeeded)."""
        if "fixed_params" in trial.system_attrs:
            return trial.system_attrs["fixed_params"]
        return trial.params if len(trial.params) == self.sampler.n_params else None


# search.sampler -> (proposer factory, one line for help and docs). The config's choices are its keys.
SAMPLERS: dict[str, tuple[Callable[[RunConfig, Stage, list[RescaleFactors]], Proposer], str]] = {
    "longrope": (GAProposer, "the LongRoPE evolution (paper section 3.2): mutants and crossovers "
                             "of the best, synchronous generations"),
    "cmaes": (OptunaProposer, "Optuna's CMA-ES over monotone steps of λ"),
    "tpe": (OptunaProposer, "Optuna's multivariate TPE over monotone steps of λ"),
    "random": (OptunaProposer, "Optuna's random search over monotone steps of λ (its k-th draw a "
                               "function of (seed, k): the same on any number of workers)"),
}


def make_proposer(cfg: RunConfig, stage: Stage, seeds: list[RescaleFactors], lag: int = 1) -> Proposer:
    """`lag`: the candidates the backend holds at once (its workers); TPE and CMA-ES draw that many
    without each other's scores, a stage keeping the lag it began with (DrawSeeded)."""
    factory, _ = SAMPLERS[cfg.search.sampler]
    proposer = factory(cfg, stage, seeds)
    if isinstance(proposer, OptunaProposer):
        proposer.lag = lag
    return proposer


def best_trial(study: optuna.Study):
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)]
    return min(done, key=lambda t: (t.value, tuple(t.system_attrs.get(SLOT, [t.number])))) if done else None


__all__ = ["SAMPLERS", "GAProposer", "OptunaProposer", "Proposer", "make_proposer", "best_trial",
           "to_params"]
