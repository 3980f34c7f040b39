"""Where candidates run: in this process, or on Ray actors (one model replica each).

Both backends take jobs keyed by trial number and hand back (key, Evaluation)
as they finish. The Ray backend keeps every actor busy, and when an actor dies
(its process killed, its node lost) it re-runs the dead actor's candidate on the
next worker free, and starts a replacement that takes work once it is up: the
run never stops for one worker or one node, and the result cannot change
(scoring is deterministic). A replacement that cannot be placed (the lost node's
resources are gone) waits without holding any candidate. A candidate whose
scoring killed its worker twice (out of memory, a crash in a kernel) is not
tried a third time: it comes back as a failed evaluation; a lost node does not
count against the candidate that was running on it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from longrope.objectives.perplexity import FAILED, Evaluation
from longrope.objectives.pruning import Cutoff
from longrope.objectives.workers import ObjectiveSpec, make_evaluator, ray_worker_class
from longrope.runs.rundir import STORAGE_ERRORS
from longrope.spaces import RescaleFactors, RopeGeometry, UserError


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

    def task_records(self, length: int) -> list[dict] | None:
        return self.evaluator.task_records(length)

    def wait(self) -> tuple[int, Evaluation]:
        return self._done.popleft()

    def busy(self) -> bool:
        return bool(self._done)

    def close(self) -> None:
        pass


def init_ray(address: str = "", num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join `address` (or RAY_ADDRESS) when given, else start a local Ray of our own.

    A plain ``ray.init()`` would join the cluster a ``ray start`` left on this machine (Ray finds it
    through /tmp/ray/ray_current_cluster), and then refuse num_cpus; "local" always starts one.
    ``auto`` joins that cluster on purpose."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    addr = address or os.environ.get("RAY_ADDRESS", "")
    if addr:
        probe_address(addr)
    # ray.init puts its own SIGTERM handler (sys.exit(15)) in place of the caller's, the driver's
    # that re-queues and exits 143: the caller's is put back, and given a SIGTERM that came during init
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        if addr:
            ray.init(address=addr, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                     log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UserError(f"cannot start or join Ray{f' at {addr}' if addr else ''}: {e}") from None
    except SystemExit as e:
        if e.code == signal.SIGTERM and callable(previous):
            previous(signal.SIGTERM, None)
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


PROBE_SECONDS = 10.0  # a head that does not accept a connection by then is not there


def probe_address(addr: str, timeout: float = PROBE_SECONDS) -> None:
    """Refuse in one line an address whose head does not answer: ray.init retries a wrong
    HOST:PORT for many minutes (a typo in a batch script burns the allocation). Only a plain
    or ray:// HOST:PORT is probed; "auto", "local" and others go to Ray as they are."""
    import socket
    from urllib.parse import urlsplit

    hostport = addr.split("://", 1)[1] if addr.startswith("ray://") else addr
    if "://" in hostport or hostport.count(":") != 1:
        return
    try:
        url = urlsplit(f"//{hostport}")
        host, port = url.hostname, url.port
    except ValueError:
        raise UserError(f"Ray address {addr!r} is not HOST:PORT") from None
    if not host or port is None:
        raise UserError(f"Ray address {addr!r} is not HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        why = f"no answer in {timeout:g} s" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise UserError(f"cannot join Ray at {addr}: nothing answers there ({why}); check the head's "
                        "address and port (`ray start --head` prints them)") from None


MAX_DEATHS = 2  # a candidate that kills this many workers is recorded as failed
MAX_START_FAILURES = 3  # replacements in a row that die before they start: stop the run
POOL_KEY = -1  # the job key of evaluate_pool's candidate (trial numbers are >= 0)
PING_SECONDS = 5.0  # an idle worker that has not answered by then is taken as alive
WAIT_NOTE = 60.0  # seconds with nothing scoring and workers waiting to be placed: say so (then 2x, 4x, ...)


def ray_get(ref):
    """ray.get, with a UserError raised inside a task or actor re-raised here as one line, and a
    write the run's storage refused (a fine-tune's checkpoint on a full disk) as that OSError,
    which the driver turns into its one line (Run.write_failed)."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, UserError):
            raise UserError(str(cause)) from None
        if isinstance(cause, OSError) and cause.errno in STORAGE_ERRORS:
            raise OSError(cause.errno, cause.strerror, cause.filename) from None
        raise


def node_lost(error: Exception) -> bool:
    """Whether an actor died with its node (preempted, removed, unreachable) rather than by what it
    ran; Ray says so in the error (ActorDiedErrorContext: "The actor died because its node has died")."""
    return bool(getattr(error, "preempted", False)) or "its node has died" in str(error)


def death_reason(error: Exception) -> str:
    """The line of an actor's death error that says why (Ray's first line says only that it died)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip() and not ln.startswith("\t")]
    why = [ln for ln in lines if "unexpectedly before finishing" not in ln]
    return (why or lines or [type(error).__name__])[0][:200]


class RayBackend:
    """One actor per model replica with `num_gpus` GPUs each.

    `idle` actors are up and free; `inflight` maps a task's ref to its (job, actor); `starting`
    maps a replacement's first call to the actor until it answers; `queue` holds the candidates
    waiting for the next free actor (a dead actor's, evaluate_pool's); `done` holds results not
    yet handed back by `wait`."""

    def __init__(self, spec: ObjectiveSpec, count: int, num_gpus: float = 0.0, num_cpus: float = 1.0,
                 address: str = ""):
        import ray

        init_ray(address)
        self.ray = ray
        self.spec, self.count, self.num_gpus, self.num_cpus = spec, count, num_gpus, num_cpus
        count = check_resources(node_resources(ray), count, num_gpus, num_cpus)
        self.actor_cls = ray_worker_class()
        self.actors = [self._new_actor() for _ in range(count)]
        self.idle = list(self.actors)
        self.inflight: dict[Any, tuple[Job, Any]] = {}
        self.starting: dict[Any, Any] = {}
        self.queue: deque[Job] = deque()
        self.done: deque[tuple[int, Evaluation]] = deque()
        self.replaced = 0
        self.start_failures = 0  # replacements in a row that died before they started
        self.deaths: dict[int, int] = {}  # job key -> workers it killed
        self.waits = 0  # WAIT_NOTE periods in a row in which nothing happened
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
        """Jobs the driver may still submit: a worker starting counts (its job waits in `queue`
        for the first worker free or up, which need not be that one: it may never be placed)."""
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

    def task_records(self, length: int) -> list[dict] | None:
        """Every replica builds the same samples (a pure function of seed, length, documents)."""
        return self._get((self.idle or self.actors)[0].task_records.remote(length))

    def busy(self) -> bool:
        return bool(self.inflight or self.queue or self.done)

    def submit(self, job: Job, actor=None) -> None:
        if actor is None and not self.idle:
            self.queue.append(job)
            return
        actor = actor or self.idle.pop(0)
        ref = actor.evaluate.remote(job.factors, job.length, job.threshold, job.pool)
        self.inflight[ref] = (job, actor)

    def wait(self) -> tuple[int, Evaluation]:
        while not self.done:
            self._step()
        return self.done.popleft()

    def _dispatch(self) -> None:
        """Queued candidates go to idle actors first."""
        while self.queue and self.idle:
            self.submit(self.queue.popleft())

    def _step(self) -> None:
        """Wait for one thing to happen: a result (into `done`), a worker's death (its candidate
        queued again, or failed after MAX_DEATHS), or a replacement coming up."""
        ray = self.ray
        ready, _ = ray.wait([*self.inflight, *self.starting], num_returns=1, timeout=WAIT_NOTE)
        if not ready:
            self._note_waiting()
            return
        self.waits = 0
        ref = ready[0]
        if ref in self.starting:
            actor = self.starting.pop(ref)
            try:
                self._get(ref)
            except ray.exceptions.RayActorError as e:
                self.start_failures += 0 if node_lost(e) else 1
                if self.start_failures >= MAX_START_FAILURES:
                    raise UserError(f"{MAX_START_FAILURES} replacement workers in a row died before they "
                                    f"started: {death_reason(e)}") from None
                self._replace(actor, e)
                return
            self.start_failures = 0
            self.idle.append(actor)
            self._dispatch()
            return
        job, actor = self.inflight.pop(ref)
        try:
            result = self._get(ref)
        except ray.exceptions.RayActorError as e:
            # The actor died (OOM, node lost, killed): replace it and re-run its candidate on the
            # next free worker, unless this candidate has now killed MAX_DEATHS workers.
            self._replace(actor, e)
            if not node_lost(e):
                self.deaths[job.key] = self.deaths.get(job.key, 0) + 1
            if self.deaths.get(job.key, 0) >= MAX_DEATHS:
                self.done.append((job.key, Evaluation(
                    job.factors, job.length, FAILED, float("inf"),
                    reason=f"its worker died {MAX_DEATHS} times while scoring it (out of memory or a "
                           f"crash?): {death_reason(e)}")))
            else:
                self.queue.append(job)
            self._drop_dead_idle()
            self._dispatch()
            return
        self.done.append((job.key, result))
        self.idle.append(actor)
        self._dispatch()

    def _drop_dead_idle(self) -> None:
        """Deaths come together (an OOM sweep, a node's processes): an idle worker may be dead
        without Ray having said so, since nothing was asked of it. Asked before a dead worker's
        candidate goes to one, so that its death does not count against the candidate (a second
        death records it FAILED) and the candidate waits for a replacement instead."""
        pings = {a.pid.remote(): a for a in self.idle}
        if not pings:
            return
        answered, _ = self.ray.wait(list(pings), num_returns=len(pings), timeout=PING_SECONDS)
        for ref in answered:
            try:
                self._get(ref)
            except self.ray.exceptions.RayActorError as e:
                self._replace(pings[ref], e)

    def _note_waiting(self) -> None:
        """Nothing scoring and every worker still to be placed (its node lost, the cluster full):
        the search waits for the cluster, and says so after WAIT_NOTE seconds, then 2x, 4x, ...
        later, instead of a progress bar that stops without a word."""
        self.waits = 0 if self.inflight else self.waits + 1  # a long evaluation is not a wait
        if not self.waits or self.waits & (self.waits - 1):
            return
        free = self.ray.available_resources()
        print(f"note: nothing has scored for {self.waits * WAIT_NOTE:g} s: {len(self.starting)} worker(s) "
              f"not up yet, waiting for the cluster to place them (each needs {self.num_gpus:g} GPUs, "
              f"{self.num_cpus:g} CPUs; free now: {free.get('GPU', 0):g} GPUs, {free.get('CPU', 0):g} CPUs) "
              "or still loading their model; the search goes on once one starts (a node added or back), "
              "or stop it and resume later", file=sys.stderr)

    def _replace(self, actor, error: Exception) -> None:
        """Drop a dead actor and start another; it takes work once its first call answers."""
        self.actors.remove(actor)
        if actor in self.idle:
            self.idle.remove(actor)
        fresh = self._new_actor()
        self.actors.append(fresh)
        self.starting[fresh.pid.remote()] = fresh
        self.replaced += 1
        print(f"note: a worker died{' with its node' if node_lost(error) else ''} "
              f"({death_reason(error)}); its candidate goes to the next free worker and a new "
              "worker is starting", file=sys.stderr)

    def worker_pids(self) -> list[int]:
        return [self.ray.get(a.pid.remote()) for a in self.actors]

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)


def check_resources(nodes: list[dict], count: int, num_gpus: float, num_cpus: float) -> int:
    """Refuse a request the cluster cannot ever satisfy (Ray would wait forever), and cap the
    replica count at what fits at once: a replica that can never be placed would hold its
    candidate, and with it the generation, forever. `nodes`: each live node's resources (a
    replica is one actor, so it must fit on one node: two 1-GPU nodes do not hold a 2-GPU one)."""
    gpus = sum(n.get("GPU", 0.0) for n in nodes)
    cpus = sum(n.get("CPU", 0.0) for n in nodes)
    if num_gpus > 0 and gpus <= 0:
        raise UserError(f"workers.num_gpus = {num_gpus} but the Ray cluster has no GPUs; "
                        "set workers.num_gpus = 0 to run on CPU, or join a GPU cluster (--address)")

    def on(node: dict) -> int:  # replicas that fit on this node
        n = count
        for need, have in ((num_gpus, node.get("GPU", 0.0)), (num_cpus, node.get("CPU", 0.0))):
            if need > 0:
                n = min(n, int(have // need + 1e-9))
        return n

    fits = min(count, sum(on(n) for n in nodes))
    if fits == 0:
        big_g = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
        big_c = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
        raise UserError(f"one replica needs {num_gpus:g} GPUs and {num_cpus:g} CPUs on one node, but no "
                        f"node of the cluster has that (the most on a node: {big_g:g} GPUs, {big_c:g} CPUs; "
                        f"in all: {gpus:g} GPUs, {cpus:g} CPUs); lower workers.num_gpus / num_cpus")
    if fits < count:
        print(f"note: the cluster fits {fits} of the {count} replicas asked for "
              f"({gpus:g} GPUs, {cpus:g} CPUs in all); running {fits}", file=sys.stderr)
    return fits


def node_resources(ray) -> list[dict]:
    """Each live node's declared resources (CPU, GPU, ...), as Ray reports them."""
    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def make_backend(spec: ObjectiveSpec, workers) -> InProcessBackend | RayBackend:
    if workers.backend == "inprocess":
        return InProcessBackend(spec)
    return RayBackend(spec, workers.count, workers.num_gpus, workers.num_cpus, workers.address)
