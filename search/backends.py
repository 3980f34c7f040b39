"""Where candidates run: in this process, or on Ray actors (one model replica each).

Both backends take jobs keyed by trial number and hand back (key, Evaluation)
as they finish. The Ray backend keeps every actor busy, and when an actor dies
(its process killed, its node lost) it re-runs the dead actor's candidate on the
next worker free, and starts a replacement that takes work once it is up: the
run never stops for one worker or one node, and the result cannot change
(scoring is deterministic). A replacement that cannot be placed (the lost node's
resources are gone) waits without holding any candidate. A candidate whose
scoring killed its worker twice (a crash in a kernel, the system's OOM killer) is
not tried a third time: it comes back as a failed evaluation; a lost node, or a
kill by Ray's memory monitor, does not count against the candidate it ran (the
monitor's kills in a row stop the run: too many replicas for the node).
"""

from __future__ import annotations

import sys
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from longrope.objectives.perplexity import COMPLETE, FAILED, Evaluation
from longrope.objectives.pruning import Cutoff
from longrope.objectives.workers import ObjectiveSpec, make_evaluator, ray_worker_class
from longrope.spaces import RescaleFactors, RopeGeometry, UserError

from .cluster import (
    DeathStreak,
    DeviceFault,
    check_resources,
    death_kind,
    death_reason,
    init_ray,
    memory_kill,
    node_resources,
    not_its_fault,
    ray_get,
    start_failure,
)
from .stalls import StallWatch


@dataclass(frozen=True)
class Job:
    key: int
    factors: RescaleFactors
    length: int
    threshold: Cutoff | None  # when to stop scoring (objectives/pruning.py)
    pool: str = "search"  # which documents: "search", or "heldout" (evaluate_pool)


class InProcessBackend:
    """Scores in the driver process; for tests, tiny runs and a laptop."""

    def __init__(self, spec: ObjectiveSpec):
        self.evaluator = make_evaluator(spec)
        self.capacity = 1
        self._done: deque[tuple[int, Evaluation]] = deque()
        self.inflight = 0

    def check(self, lengths: list[int]) -> RopeGeometry:
        return self.evaluator.check(lengths)

    def submit(self, job: Job) -> None:
        ev = self.evaluator.evaluate(job.factors, job.length, job.threshold, job.pool)
        self._done.append((job.key, ev))

    def free(self) -> int:
        return self.capacity - len(self._done)

    def evaluate_pool(self, factors: RescaleFactors, length: int, pool: str) -> Evaluation:
        return self.evaluator.evaluate(factors, length, None, pool)

    def task_records(self, length: int, pool: str = "search") -> list[dict] | None:
        return self.evaluator.task_records(length, pool)

    def precision(self) -> str | None:
        return self.evaluator.precision()

    def wait(self) -> tuple[int, Evaluation]:
        return self._done.popleft()

    def busy(self) -> bool:
        return bool(self._done)

    def close(self) -> None:
        self.evaluator = None  # its model's memory goes back (devices.release_memory)


MAX_DEATHS = 2  # a candidate that kills this many workers is recorded as failed
MAX_START_FAILURES = 3  # replacements in a row that die before they start: stop the run
POOL_KEY = -1  # the job key of evaluate_pool's candidate (trial numbers are >= 0)
PING_SECONDS = 5.0  # an idle worker that has not answered by then is taken as alive
WAIT_NOTE = 60.0  # seconds with nothing scoring and workers waiting to be placed: say so (then 2x, 4x, ...)


def spaced(periods: int) -> bool:
    """Whether a waiting note is due after `periods` WAIT_NOTE periods: after 1, 2, 4, 8, ..."""
    return periods > 0 and not periods & (periods - 1)


class RayBackend:
    """One actor per model replica with `num_gpus` GPUs each.

    `idle` actors are up and free; `inflight` maps a task's ref to its (job, actor); `starting`
    maps a replacement's first call to the actor until it answers; `queue` holds the candidates
    waiting for the next free actor (a dead actor's, evaluate_pool's); `done` holds results not
    yet handed back by `wait`."""

    def __init__(self, spec: ObjectiveSpec, count: int, num_gpus: float = 0.0, num_cpus: float = 1.0,
                 address: str = ""):
        import ray

        if num_gpus == 0 and spec.model.device == "cuda":  # refused before Ray starts (workers.py)
            raise UserError('model.device = "cuda" with workers.num_gpus = 0: the replicas would hold no '
                            'GPU; set workers.num_gpus (1, or 0.25 for four replicas a GPU)')
        init_ray(address)
        self.ray = ray
        self.spec, self.count, self.num_gpus, self.num_cpus = spec, count, num_gpus, num_cpus
        count = check_resources(node_resources(ray), count, num_gpus, num_cpus)
        self.actor_cls = ray_worker_class()
        self.actors = [self._new_actor() for _ in range(count)]
        self.slots = {a: i for i, a in enumerate(self.actors)}  # a replica's slot, its replacements
        self.idle = list(self.actors)
        self.inflight: dict[Any, tuple[Job, Any]] = {}
        self.starting: dict[Any, Any] = {}
        self.queue: deque[Job] = deque()
        self.done: deque[tuple[int, Evaluation]] = deque()
        self.replaced = 0
        self.start_failures = 0  # replacements in a row that died before they started
        self.deaths: dict[int, int] = {}  # job key -> workers it killed
        self.streak = DeathStreak()  # deaths since an evaluation last finished
        self.waits = 0  # WAIT_NOTE periods in a row in which nothing happened
        self.capacity = self.count = count
        self.dtype: str | None = None  # what the workers score in, once precision() has asked
        self.watch = StallWatch()  # how long each evaluation in flight has run (a hung GPU)
        # a worker's death as ray.get reports it: Ray's memory monitor kills with an OutOfMemoryError,
        # which is no RayActorError; a worker whose GPU failed under it lives on, useless (DeviceFault)
        self.died = (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError, DeviceFault)

    def _new_actor(self):
        return self.actor_cls.options(num_gpus=self.num_gpus, num_cpus=self.num_cpus).remote(self.spec)

    def _get(self, ref):
        return ray_get(ref)

    def check(self, lengths: list[int]) -> RopeGeometry:
        """Every actor loads its model and documents; a user error inside one, or one its constructor
        raised (a model it cannot load), is re-raised here. Workers the cluster cannot place yet are
        waited for with a note; one that dies while it loads (its node preempted, killed for memory,
        its GPU failed) is replaced: MAX_START_FAILURES in a row not lost with their node stop the run."""
        todo, geos, waits, failures = list(self.actors), [], 0, 0
        while todo:
            refs = {a.check.remote(lengths): a for a in todo}
            pending = list(refs)
            while pending:
                _, pending = self.ray.wait(pending, num_returns=len(pending), timeout=WAIT_NOTE)
                waits += bool(pending)
                if pending and spaced(waits):
                    print(self._waiting(f"waited {waits * WAIT_NOTE:g} s for the workers", len(pending)),
                          file=sys.stderr)
            todo = []
            for ref, actor in refs.items():
                try:
                    geos.append(self._get(ref))
                except self.died as e:
                    failures += 0 if not_its_fault(e) else 1
                    if getattr(e, "actor_init_failed", False) or failures >= MAX_START_FAILURES:
                        raise start_failure(failures, e) from None
                    fresh = self._swap(actor, e, "a new worker is starting")
                    self.idle.append(fresh)
                    todo.append(fresh)
        return geos[0]

    def free(self) -> int:
        """Jobs the driver may still submit: a worker starting counts (its job waits in `queue` for
        the first worker free or up, not necessarily that one, which may never be placed)."""
        return max(len(self.actors) - len(self.inflight) - len(self.queue), 0)

    def evaluate_pool(self, factors: RescaleFactors, length: int, pool: str) -> Evaluation:
        """Score one candidate on `pool` on the next free worker (a dead worker's re-run like any)."""
        self.deaths.pop(POOL_KEY, None)
        self.queue.append(Job(POOL_KEY, factors, length, None, pool))
        self._dispatch()
        while not any(key == POOL_KEY for key, _ in self.done):
            self._step()
        ours = next(item for item in self.done if item[0] == POOL_KEY)
        self.done.remove(ours)
        return ours[1]

    def task_records(self, length: int, pool: str = "search") -> list[dict] | None:
        """Every replica builds the same samples (a pure function of seed, length, documents)."""
        return self._ask_one("task_records", length, pool)

    def fingerprint(self, path: str) -> str | None:
        """The model's fingerprint where the workers run (the driver may not see the path)."""
        return self._ask_one("fingerprint", path)

    def _ask_one(self, method: str, *args: Any) -> Any:
        """`method(*args)` of a worker that is up, one found dead on the way replaced."""
        while True:
            while not self.idle:
                self._step()
            actor = self.idle[0]
            try:
                return self._get(getattr(actor, method).remote(*args))
            except self.died as e:
                self._replace(actor, e)

    def precision(self) -> str | None:
        """The dtype every worker up scores in (recorded per stage; a resume must match it). Workers
        that differ (model.dtype = auto on an A100 and a V100: bf16, fp16) would mix precisions in one
        ranking: one line instead. A replacement up later in another dtype is refused in _step."""
        while True:
            while not self.idle:
                self._step()
            asked = [(actor, actor.precision.remote()) for actor in self.idle]  # all at once
            seen: Counter[str | None] = Counter()
            for actor, ref in asked:
                try:
                    seen[self._get(ref)] += 1
                except self.died as e:
                    self._replace(actor, e)
            if seen:
                break
        if len(seen) > 1:
            mixed = ", ".join(f"{dtype} on {n}" for dtype, n in seen.most_common())
            raise UserError(f"the workers load the model in different dtypes ({mixed}): model.dtype = "
                            "'auto' on GPUs of two generations; set [model] dtype to one of them, so that "
                            "every candidate is scored alike")
        self.dtype = next(iter(seen))
        return self.dtype

    def busy(self) -> bool:
        return bool(self.inflight or self.queue or self.done)

    def submit(self, job: Job, actor=None) -> None:
        if actor is None and not self.idle:
            self.queue.append(job)
            return
        actor = actor or self.idle.pop(0)
        ref = actor.evaluate.remote(job.factors, job.length, job.threshold, job.pool)
        self.inflight[ref] = (job, actor)
        self.watch.start(ref, (job.length, job.pool))

    def wait(self) -> tuple[int, Evaluation]:
        while not self.done:
            self._step()
        return self.done.popleft()

    def _dispatch(self) -> None:
        """Queued candidates go to idle actors; a dead worker's candidate only to one that has just
        answered: deaths come together (an OOM sweep, a node's processes), an idle worker may be dead
        unnoticed (nothing asked of it), and its death would count against the candidate (twice: FAILED)."""
        while self.queue and self.idle:
            if self.queue[0].key in self.deaths and not self._alive(self.idle[0]):
                continue  # replaced; the candidate waits for the next worker
            self.submit(self.queue.popleft())

    def _alive(self, actor) -> bool:
        """Whether an idle worker answers (one still silent after PING_SECONDS counts as alive);
        a dead one is replaced."""
        ping = actor.pid.remote()
        if not self.ray.wait([ping], timeout=PING_SECONDS)[0]:
            return True
        try:
            self._get(ping)
            return True
        except self.died as e:
            self._replace(actor, e)
            return False

    def _step(self) -> None:
        """Wait for one thing to happen: a result (into `done`), a worker's death (its candidate
        queued again, or failed after MAX_DEATHS), a replacement coming up, or an evaluation
        passing its limit (a hung GPU raises nothing: search/stalls.py), checked at every step."""
        ready, _ = self.ray.wait([*self.inflight, *self.starting], num_returns=1,
                                 timeout=self.watch.wait(WAIT_NOTE))
        hung = self.watch.stalled(besides=ready)
        for ref, e in hung:
            self.watch.end(ref, whole=False)
            self._lost(*self.inflight.pop(ref), e)
        if not ready:
            if not hung:  # a wait cut short at a stall limit is not WAIT_NOTE of waiting for the cluster
                self._note_waiting()
            return
        self.waits = 0
        ref = ready[0]
        if ref in self.starting:
            actor = self.starting.pop(ref)
            try:
                got = self._get(ref)
            except self.died as e:
                self.start_failures += 0 if not_its_fault(e) else 1
                if self.start_failures >= MAX_START_FAILURES:
                    raise start_failure(self.start_failures, e) from None
                self._replace(actor, e)
                return
            self.start_failures = 0
            if self.dtype is not None and got is not None and got != self.dtype:
                raise UserError(f"a replacement worker loads the model in {got}, where this search scores in "
                                f"{self.dtype} (model.dtype = 'auto' on another kind of GPU); set [model] "
                                f"dtype = '{self.dtype}' and resume")
            self.idle.append(actor)
            self._dispatch()
            return
        job, actor = self.inflight.pop(ref)
        try:
            result = self._get(ref)
        except self.died as e:
            self.watch.end(ref, whole=False)
            self._lost(job, actor, e)
            return
        self.watch.end(ref, whole=result.status == COMPLETE)
        self.streak.clear()
        self.deaths.pop(job.key, None)  # trial numbers start again at 0 in the next stage
        self.done.append((job.key, result))
        self.idle.append(actor)
        self._dispatch()

    def _lost(self, job: Job, actor, e: Exception) -> None:
        """The actor died (OOM, node lost, killed) or hung: replace it, re-run its candidate on the next
        free worker unless it killed MAX_DEATHS (a memory-monitor kill is the node's: cluster.memory_kill)."""
        slot = self.slots.get(actor)
        self._replace(actor, e)
        if stop := self.streak.stop(slot, e, self.count):  # every evaluation fails, or every GPU
            raise stop
        # held at 0 for a death not the candidate's: a re-run all the same, for _dispatch
        self.deaths[job.key] = self.deaths.get(job.key, 0) + (not memory_kill(e) and not not_its_fault(e))
        if self.deaths.get(job.key, 0) >= MAX_DEATHS:
            del self.deaths[job.key]  # trial numbers start again at 0 in the next stage
            self.done.append((job.key, Evaluation(
                job.factors, job.length, FAILED, float("inf"),
                reason=f"its worker died {MAX_DEATHS} times while scoring it (out of memory or a "
                       f"crash?): {death_reason(e)}")))
        else:
            self.queue.append(job)
        self._dispatch()

    def _note_waiting(self) -> None:
        """Nothing scoring and every worker still to be placed (its node lost, the cluster full):
        the search waits for the cluster, and says so after WAIT_NOTE seconds, then 2x, 4x, ...
        later, instead of a progress bar that stops without a word."""
        self.waits = 0 if self.inflight else self.waits + 1  # a long evaluation is not a wait
        if not spaced(self.waits):
            return
        print(self._waiting(f"nothing has scored for {self.waits * WAIT_NOTE:g} s", len(self.starting)),
              file=sys.stderr)

    def _waiting(self, head: str, workers: int) -> str:
        """The note after WAIT_NOTE, 2x, 4x, ... seconds of waiting for workers to come up."""
        free = self.ray.available_resources()
        return (f"note: {head}: {workers} worker(s) not up yet, waiting for the cluster to place them "
                f"(each needs {self.num_gpus:g} GPUs, {self.num_cpus:g} CPUs; free now: "
                f"{free.get('GPU', 0):g} GPUs, {free.get('CPU', 0):g} CPUs) or still loading their model; "
                "the search goes on once one starts (a node added or back, another job done), or stop it "
                "and resume later")

    def _replace(self, actor, error: Exception) -> None:
        """Drop a dead actor and start another; it takes work once its first call answers."""
        fresh = self._swap(actor, error)
        self.starting[fresh.precision.remote()] = fresh

    def _swap(self, actor, error: Exception,
              then: str = "its candidate goes to the next free worker and a new worker is starting"):
        """Kill `actor` and start its replacement, saying why. The old one is killed: one Ray could
        not reach may still live and hold its GPU, and one whose GPU failed lives on useless."""
        self.ray.kill(actor)
        self.actors.remove(actor)
        if actor in self.idle:
            self.idle.remove(actor)
        fresh = self._new_actor()
        self.actors.append(fresh)
        self.slots[fresh] = self.slots.pop(actor, None)
        self.replaced += 1
        print(f"note: {death_kind(error)} ({death_reason(error)}); {then}", file=sys.stderr)
        return fresh

    def worker_pids(self) -> list[int]:
        return [self.ray.get(a.pid.remote()) for a in self.actors]

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)


def make_backend(spec: ObjectiveSpec, workers) -> InProcessBackend | RayBackend:
    if workers.backend == "inprocess":
        default = type(workers)()
        unused = [f"{k} = {getattr(workers, k)!r}" for k in ("count", "num_gpus", "num_cpus", "address")
                  if getattr(workers, k) != getattr(default, k)]
        if unused:  # the command line's --workers N and --address switch to Ray; the config's keys do not
            verb = "take" if len(unused) > 1 else "takes"
            print(f"note: [workers] {', '.join(unused)} {verb} effect with backend = \"ray\"; this search "
                  "scores in-process, one candidate at a time", file=sys.stderr)
        return InProcessBackend(spec)
    return RayBackend(spec, workers.count, workers.num_gpus, workers.num_cpus, workers.address)
