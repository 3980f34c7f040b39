"""Where candidates run: in this process, or on Ray actors (one model replica each).

Both backends take jobs keyed by trial number and hand back (key, Evaluation)
as they finish. The Ray backend keeps every actor busy, and when an actor dies
it starts a replacement and re-runs the dead actor's candidate: the run never
stops for one worker, and the result cannot change (scoring is deterministic).
A candidate whose scoring killed its worker twice (out of memory, a crash in a
kernel) is not tried a third time: it comes back as a failed evaluation.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from dataclasses import dataclass
from typing import Any

from longrope.objectives.perplexity import FAILED, Evaluation
from longrope.objectives.pruning import Cutoff
from longrope.objectives.workers import ObjectiveSpec, make_evaluator, ray_worker_class
from longrope.spaces import RescaleFactors, RopeGeometry, UserError


@dataclass(frozen=True)
class Job:
    key: int
    factors: RescaleFactors
    length: int
    threshold: Cutoff | None  # when to stop scoring (objectives/pruning.py)


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
        self._done.append((job.key, self.evaluator.evaluate(job.factors, job.length, job.threshold)))

    def free(self) -> int:
        return self.capacity - len(self._done)

    def evaluate_pool(self, factors: RescaleFactors, length: int, pool: str) -> Evaluation:
        return self.evaluator.evaluate(factors, length, None, pool)

    def task_records(self, length: int) -> list[dict] | None:
        return self.evaluator.task_records(length)

    def wait(self) -> tuple[int, Evaluation]:
        return self._done.popleft()

    def busy(self) -> bool:
        return bool(self._done)

    def close(self) -> None:
        pass


def init_ray(address: str = "", num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join `address` (or RAY_ADDRESS) when given, else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    addr = address or os.environ.get("RAY_ADDRESS", "")
    try:
        if addr:
            ray.init(address=addr, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UserError(f"cannot start or join Ray{f' at {addr}' if addr else ''}: {e}") from None


MAX_DEATHS = 2  # a candidate that kills this many workers is recorded as failed


def ray_get(ref):
    """ray.get, with a UserError raised inside a task or actor re-raised here as one line."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, UserError):
            raise UserError(str(cause)) from None
        raise


class RayBackend:
    """One actor per model replica with `num_gpus` GPUs each."""

    def __init__(self, spec: ObjectiveSpec, count: int, num_gpus: float = 0.0, num_cpus: float = 1.0,
                 address: str = ""):
        import ray

        init_ray(address)
        self.ray = ray
        self.spec, self.count, self.num_gpus, self.num_cpus = spec, count, num_gpus, num_cpus
        count = check_resources(ray.cluster_resources(), count, num_gpus, num_cpus)
        self.actor_cls = ray_worker_class()
        self.actors = [self._new_actor() for _ in range(count)]
        self.idle = list(self.actors)
        self.inflight: dict[Any, tuple[Job, Any]] = {}
        self.replaced = 0
        self.deaths: dict[int, int] = {}  # job key -> workers it killed
        self.capacity = self.count = count

    def _new_actor(self):
        return self.actor_cls.options(num_gpus=self.num_gpus, num_cpus=self.num_cpus).remote(self.spec)

    def _get(self, ref):
        return ray_get(ref)

    def check(self, lengths: list[int]) -> RopeGeometry:
        """Every actor loads its model and documents; a user error inside one is re-raised here."""
        ray = self.ray
        try:
            geos = [self._get(a.check.remote(lengths)) for a in self.actors]
        except ray.exceptions.RayActorError as e:
            cause = getattr(e, "cause", None) or e
            last = str(cause).strip().splitlines()[-1][:300]
            raise UserError(f"a worker failed to start: {last}") from None
        return geos[0]

    def free(self) -> int:
        return len(self.idle)

    def evaluate_pool(self, factors: RescaleFactors, length: int, pool: str) -> Evaluation:
        return self._get(self.actors[0].evaluate.remote(factors, length, None, pool))

    def task_records(self, length: int) -> list[dict] | None:
        """Every replica builds the same samples (a pure function of seed, length, documents)."""
        return self._get(self.actors[0].task_records.remote(length))

    def busy(self) -> bool:
        return bool(self.inflight)

    def submit(self, job: Job, actor=None) -> None:
        actor = actor or self.idle.pop(0)
        ref = actor.evaluate.remote(job.factors, job.length, job.threshold)
        self.inflight[ref] = (job, actor)

    def wait(self) -> tuple[int, Evaluation]:
        ray = self.ray
        while True:
            ready, _ = ray.wait(list(self.inflight), num_returns=1)
            ref = ready[0]
            job, actor = self.inflight.pop(ref)
            try:
                result = self._get(ref)
            except ray.exceptions.RayActorError as e:
                # The actor died (OOM, node lost, killed): replace it and re-run its candidate,
                # unless this candidate has now killed MAX_DEATHS workers.
                self.actors.remove(actor)
                fresh = self._new_actor()
                self.actors.append(fresh)
                self.replaced += 1
                self.deaths[job.key] = self.deaths.get(job.key, 0) + 1
                if self.deaths[job.key] >= MAX_DEATHS:
                    self.idle.append(fresh)
                    cause = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                    return job.key, Evaluation(
                        job.factors, job.length, FAILED, float("inf"),
                        reason=f"its worker died {MAX_DEATHS} times while scoring it (out of memory or a "
                               f"crash?): {cause}")
                self.submit(job, fresh)
                continue
            self.idle.append(actor)
            return job.key, result

    def worker_pids(self) -> list[int]:
        return [self.ray.get(a.pid.remote()) for a in self.actors]

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)


def check_resources(resources: dict, count: int, num_gpus: float, num_cpus: float) -> int:
    """Refuse a request the cluster cannot ever satisfy (Ray would wait forever), and
    cap the replica count at what fits at once: a replica that can never be placed
    would hold its candidate, and with it the generation, forever."""
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    if num_gpus > 0 and gpus <= 0:
        raise UserError(f"workers.num_gpus = {num_gpus} but the Ray cluster has no GPUs; "
                        "set workers.num_gpus = 0 to run on CPU, or join a GPU cluster (--address)")
    if num_gpus > gpus:
        raise UserError(f"one replica needs {num_gpus} GPUs but the cluster has {gpus:g} in all")
    if num_cpus > cpus:
        raise UserError(f"one replica needs {num_cpus} CPUs but the cluster has {cpus:g} in all")
    fits = count
    if num_gpus:
        fits = min(fits, int(gpus // num_gpus + 1e-9))
    if num_cpus:
        fits = min(fits, int(cpus // num_cpus + 1e-9))
    if fits < count:
        print(f"note: the cluster fits {fits} of the {count} replicas asked for "
              f"({gpus:g} GPUs, {cpus:g} CPUs); running {fits}", file=sys.stderr)
    return max(fits, 1)


def make_backend(spec: ObjectiveSpec, workers) -> InProcessBackend | RayBackend:
    if workers.backend == "inprocess":
        return InProcessBackend(spec)
    return RayBackend(spec, workers.count, workers.num_gpus, workers.num_cpus, workers.address)
