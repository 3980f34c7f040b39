"""Same seed, same trajectory: backends, worker counts, arrival order."""

import hashlib
import json
import os
import signal
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from search_helpers import LONGROPE2, run_small, small_cfg, trajectory

from longrope.objectives.specs import ObjectiveSpec
from longrope.objectives.synthetic import SyntheticEvaluator
from longrope.search.backends import MAX_START_FAILURES, RayBackend
from longrope.search.cluster import check_resources
from longrope.spaces import UserError


class ShuffledBackend:
    """Takes up to 4 jobs at once and hands results back in a seeded random order."""

    def __init__(self, seed):
        self.ev = SyntheticEvaluator(ObjectiveSpec.of("synthetic"))
        self.rng = np.random.default_rng(seed)
        self.pending = []
        self.capacity = 4

    def check(self, lengths):
        return self.ev.check(lengths)

    def free(self):
        return self.capacity - len(self.pending)

    def busy(self):
        return bool(self.pending)

    def submit(self, job):
        self.pending.append(job)

    def wait(self):
        job = self.pending.pop(int(self.rng.integers(len(self.pending))))
        return job.key, self.ev.evaluate(job.factors, job.length, job.threshold)

    def evaluate_pool(self, factors, length, pool):
        return self.ev.evaluate(factors, length, None, pool)

    def close(self):
        pass


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run, _ = run_small(tmp_path_factory.mktemp("ref"), short="[32]")
    return trajectory(run)


def digest(traj) -> str:
    """sha256 of a trajectory, numbers to 10 digits (robust to the last bits of a libm)."""
    rows = {k: [[list(slot), [[n, round(v, 10)] for n, v in params], state, None if v is None else round(v, 10)]
                for slot, params, state, v in rows] for k, rows in traj.items()}
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


# The reference run's digest as computed before space.critical_dim and a searched mscale existed
# (main at 01d14e4): with both off ("off", "su") the search is the same, candidate for candidate.
# That run's pruning was the exact bound (the default then; wilcoxon since session 9). Session 23
# fixed generation 0 (mutants of each seed in turn, not of the first alone): this is 01d14e4's
# digest with that one line applied to it (6c538f97... without it).
BEFORE_LONGROPE2 = "3cd3009cbf73c9e27bfe844eb27f0dae40919d1c83a5c15caeb3894dbc8bf39b"


def test_longrope2_options_off_leave_the_trajectory_unchanged(tmp_path):
    run, _ = run_small(tmp_path, short="[32]", pruner="exact")
    assert digest(trajectory(run)) == BEFORE_LONGROPE2


def test_longrope2_options_same_trajectory_in_any_arrival_order(tmp_path):
    ref, _ = run_small(tmp_path, name="ref", short="[32]", space=LONGROPE2)
    shuffled, _ = run_small(tmp_path, name="shuffled", backend_obj=ShuffledBackend(0), short="[32]",
                            space=LONGROPE2)
    assert trajectory(shuffled) == trajectory(ref)
    assert "mscale" in dict(trajectory(ref)["long-256"][0][1])
    other, _ = run_small(tmp_path, name="seed1", seed=1, space=LONGROPE2)
    assert trajectory(other)["long-256"] != trajectory(ref)["long-256"]


def test_same_seed_same_trajectory_and_seed_matters(tmp_path, reference):
    run, _ = run_small(tmp_path, short="[32]")
    assert trajectory(run) == reference
    other, _ = run_small(tmp_path, name="other", short="[32]", seed=1)
    assert trajectory(other) != reference
    assert len(reference["long-256"]) == 12 + 4 * 6


@pytest.mark.parametrize("seed", [0, 1])
def test_arrival_order_does_not_matter(tmp_path, reference, seed):
    run, _ = run_small(tmp_path, backend_obj=ShuffledBackend(seed), short="[32]")
    assert trajectory(run) == reference


@pytest.mark.parametrize("count", [1, 2])
def test_ray_workers_match_in_process(tmp_path, reference, ray_session, count):
    run, _ = run_small(tmp_path, backend="ray", count=count, short="[32]")
    assert trajectory(run) == reference


def test_killed_ray_worker_is_replaced_and_result_unchanged(tmp_path, reference, ray_session):
    backend = RayBackend(ObjectiveSpec.of("synthetic:0.01"), count=2)
    victim = backend.worker_pids()[0]
    timer = threading.Timer(0.8, os.kill, (victim, signal.SIGKILL))
    timer.start()
    try:
        run, _ = run_small(tmp_path, backend_obj=backend, model="synthetic:0.01", short="[32]")
    finally:
        timer.cancel()
        backend.close()
    assert backend.replaced >= 1
    assert trajectory(run) == reference  # synthetic:0.01 scores like synthetic


def test_workers_that_cannot_be_placed_are_waited_for_with_a_note(tmp_path, reference, ray_session,
                                                                  monkeypatch, capsys):
    """Both workers lost and no room for a replacement (as when their node and its resources are
    gone: here the replacements ask for 3 CPUs of the cluster's 2): nothing scores, and the driver
    says it waits for the cluster instead of stopping without a word; once workers can be placed
    again (here: the waiting ones removed, the next asking for 1 CPU) the run ends where an
    uninterrupted one does."""
    from longrope.search import backends

    monkeypatch.setattr(backends, "WAIT_NOTE", 0.2)
    backend = RayBackend(ObjectiveSpec.of("synthetic:0.01"), count=2)
    pids = backend.worker_pids()

    def lose_both():
        backend.num_cpus = 3.0
        for pid in pids:
            os.kill(pid, signal.SIGKILL)

    def room_again():
        backend.num_cpus = 1.0
        for actor in list(backend.starting.values()):
            ray_session.kill(actor)

    timers = [threading.Timer(0.8, lose_both), threading.Timer(3.0, room_again)]
    for t in timers:
        t.start()
    try:
        run, _ = run_small(tmp_path, backend_obj=backend, model="synthetic:0.01", short="[32]")
    finally:
        for t in timers:
            t.cancel()
        backend.close()
    notes = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("note: nothing has scored")]
    assert notes and "2 worker(s) not up yet, waiting for the cluster to place them (each needs 0 GPUs, " \
        "3 CPUs" in notes[0]
    periods = [round(float(ln.split(" for ")[1].split(" s:")[0]) / 0.2) for ln in notes]
    assert all(n & (n - 1) == 0 for n in periods) and 2 in periods  # after 1, 2, 4, ... periods: spaced out
    assert backend.replaced >= 4 and trajectory(run) == reference


def test_a_candidate_is_not_blamed_for_a_worker_that_died_idle(ray_session):
    """Two workers killed together (one idle, one scoring): the candidate goes back to the queue,
    and must not be handed to the idle worker that is already dead, whose death would count as a
    second one it caused and record it FAILED. Idle workers are asked first and replaced."""
    from longrope.objectives.perplexity import FAILED
    from longrope.objectives.synthetic import GEOMETRY
    from longrope.search.backends import Job
    from longrope.spaces import RescaleFactors

    backend = RayBackend(ObjectiveSpec.of("synthetic:0.3"), count=2)
    try:
        busy, idle = backend.worker_pids()
        backend.submit(Job(0, RescaleFactors.uniform(2.0, GEOMETRY.n_freqs), 256, None))  # to the first worker
        os.kill(idle, signal.SIGKILL)
        os.kill(busy, signal.SIGKILL)
        key, ev = backend.wait()
        assert key == 0 and ev.status != FAILED and backend.replaced == 2
    finally:
        backend.close()


def _pids(backend) -> dict:
    return dict(zip(backend.actors, backend.worker_pids(), strict=True))


def _job(key=0):
    from longrope.objectives.synthetic import GEOMETRY
    from longrope.search.backends import Job
    from longrope.spaces import RescaleFactors

    return Job(key, RescaleFactors.uniform(2.0, GEOMETRY.n_freqs), 256, None)


def test_a_death_survived_in_one_stage_does_not_count_in_the_next(ray_session):
    """Trial numbers start again at 0 in each stage: trial 0 of the next stage killing one worker
    is its first death, not the second of the earlier stage's trial 0 (recorded FAILED)."""
    from longrope.objectives.perplexity import COMPLETE

    backend = RayBackend(ObjectiveSpec.of("synthetic:0.3"), count=2)
    try:
        for _ in ("long-256", "long-512"):  # the same key in two stages
            pids = _pids(backend)
            backend.submit(_job(0))
            (_, actor), = backend.inflight.values()
            os.kill(pids[actor], signal.SIGKILL)
            key, ev = backend.wait()
            assert key == 0 and ev.status == COMPLETE, ev.reason
            while backend.starting:  # the replacement up before the next stage
                backend._step()
    finally:
        backend.close()


def test_a_death_reported_as_out_of_memory_is_a_death(ray_session, monkeypatch):
    """Ray's memory monitor reports the worker it killed with an OutOfMemoryError, which is no
    RayActorError: the candidate is re-run like after any death, not a crash of the search."""
    from longrope.objectives.perplexity import COMPLETE

    backend = RayBackend(ObjectiveSpec.of("synthetic:0.3"), count=2)
    real = backend._get

    def as_oom(ref):  # the death as the memory monitor's kill reaches ray.get
        try:
            return real(ref)
        except ray_session.exceptions.RayActorError as e:
            raise ray_session.exceptions.OutOfMemoryError(f"Task was killed due to low memory: {e}") from None

    monkeypatch.setattr(backend, "_get", as_oom)
    try:
        pids = _pids(backend)
        backend.submit(_job(0))
        (_, actor), = backend.inflight.values()
        os.kill(pids[actor], signal.SIGKILL)
        key, ev = backend.wait()
        assert key == 0 and ev.status == COMPLETE and backend.replaced == 1
    finally:
        backend.close()


def test_task_records_asks_a_live_worker(ray_session):
    """Between stages every worker died unnoticed (idle, nothing asked of them): the stage's
    samples are asked of a replacement once one is up, not of a dead worker (a crash)."""
    backend = RayBackend(ObjectiveSpec.of("synthetic"), count=2)
    try:
        for pid in backend.worker_pids():
            os.kill(pid, signal.SIGKILL)
        assert backend.task_records(256) is None and backend.replaced >= 1  # synthetic: no samples
    finally:
        backend.close()


def test_workers_a_busy_cluster_cannot_place_yet_are_waited_for_with_a_note(ray_session, monkeypatch,
                                                                               capsys):
    """Another job holds the cluster's GPUs when the search starts: the workers' start waits
    with a note (after 1, 2, 4, ... periods), and goes on once the GPUs are free."""
    from longrope.search import backends

    monkeypatch.setattr(backends, "WAIT_NOTE", 0.2)
    hog = ray_session.remote(num_gpus=2, num_cpus=0)(type("Hog", (), {"ping": lambda self: 1})).remote()
    ray_session.get(hog.ping.remote())
    timer = threading.Timer(1.0, ray_session.kill, (hog,))
    timer.start()
    backend = RayBackend(ObjectiveSpec.of("synthetic"), count=1, num_gpus=1.0)
    try:
        backend.check([256])
    finally:
        timer.cancel()
        backend.close()
    notes = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("note: waited")]
    assert notes and "1 worker(s) not up yet, waiting for the cluster to place them (each needs 1 GPUs" in notes[0]


def test_a_worker_ray_cannot_reach_says_nothing_against_its_candidate():
    ray = pytest.importorskip("ray")
    from longrope.search.cluster import not_its_fault  # noqa

    assert not_its_fault(ray.exceptions.ActorUnavailableError("the actor is temporarily unavailable", None))
    assert not not_its_fault(ray.exceptions.ActorDiedError())


def test_gpu_replicas_are_scheduled_on_declared_gpus(tmp_path, reference, ray_session):
    run, d = run_small(tmp_path, backend="ray", count=3, num_gpus=1.0, short="[32]")
    assert trajectory(run) == reference
    assert d.backend.count == 2  # 3 asked, the cluster declares 2 GPUs


def test_gpus_on_a_cluster_without_gpus_is_an_error():
    with pytest.raises(UserError, match="the Ray cluster has no GPUs"):
        check_resources([{"CPU": 8.0}], 2, 1.0, 1.0)
    with pytest.raises(UserError, match="one replica needs 4 GPUs and 1 CPUs on one node, but no node"):
        check_resources([{"CPU": 8.0, "GPU": 2.0}], 1, 4.0, 1.0)
    assert check_resources([{"CPU": 8.0, "GPU": 2.0}], 4, 0.5, 1.0) == 4


def test_a_replica_or_fine_tune_given_no_gpu_runs_on_the_cpu(monkeypatch):
    """Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for an actor or task given no GPU, which then
    sees its node's GPUs: model.device = "auto" goes to the CPU there, not to GPU 0 uncounted;
    "cuda" is refused (before Ray starts, by the backend)."""
    import ray

    from longrope.objectives import workers
    from longrope.search import finetuning
    from longrope.search.backends import RayBackend

    auto, cuda = ObjectiveSpec.of("synthetic"), ObjectiveSpec.of("synthetic", device="cuda")
    assert workers.on_ray_worker(auto, []).model.device == "cpu"
    assert workers.on_ray_worker(auto, [0]) is auto  # a GPU of its own: "auto" finds it
    assert workers.on_ray_worker(cuda, ["1"]) is cuda
    with pytest.raises(UserError, match='model.device = "cuda" but this Ray worker holds no GPU'):
        workers.on_ray_worker(cuda, [])
    seen = []
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    monkeypatch.setattr(workers, "make_evaluator", lambda spec: seen.append(spec.model.device) or SimpleNamespace())
    workers._Worker(auto, share=0.0)
    finetuning._ray_task(lambda spec, *a, **kw: seen.append(spec.model.device))(auto, None, None, 256, "w", "o")
    assert seen == ["cpu", "cpu"]
    with pytest.raises(UserError, match='model.device = "cuda" with workers.num_gpus = 0'):
        RayBackend(cuda, 1, num_gpus=0.0)


def test_a_replica_given_a_share_of_a_gpu_keeps_its_memory_to_that_share(monkeypatch):
    """4 replicas of 0.25 GPU: each caps its allocator at a quarter of the card less its CUDA
    context's reserve (a neighbour's cached memory would otherwise run the others out, and caps of
    a whole quarter each add up to more than the card); a whole GPU or the CPU is not capped."""
    import ray
    import torch

    from longrope.objectives import workers

    calls, gib = [], 1 << 30
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d: calls.append((f, d)))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda d: SimpleNamespace(total_memory=(80 if d == 3 else 4) * gib))
    assert workers.cap_gpu_share("cuda", 0.25) == 0.25 - 1 / 80  # 19 GiB + a context's 1 GiB of 80
    assert workers.cap_gpu_share("cuda:1", 0.5) == 0.25  # of 4 GiB: never below half the share
    assert calls == [(0.25 - 1 / 80, 3), (0.25, 1)]
    assert 4 * (0.25 - 1 / 80) * 80 + 4 * 1 <= 80  # four caps and four contexts fit on the card
    for device, share in (("cuda", 1.0), ("cuda:0", 0.0), ("cpu", 0.25)):
        assert workers.cap_gpu_share(device, share) is None
    assert len(calls) == 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # Ray's declared GPUs on a CPU machine
    assert workers.cap_gpu_share("cuda", 0.25) is None and len(calls) == 2
    seen = []
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [0])
    monkeypatch.setattr(workers, "cap_gpu_share", lambda device, share: seen.append((device, share)) or share)
    monkeypatch.setattr(workers, "make_evaluator",
                        lambda spec: seen.append("load") or SimpleNamespace(loaded=SimpleNamespace(device="cuda")))
    w = workers._Worker(ObjectiveSpec.of("synthetic", device="cuda"), share=0.25)
    # capped before the load too (its peak, the compile warm-up's cache, within the share), then as loaded
    assert seen == [("cuda", 0.25), "load", ("cuda", 0.25)] and w.gpu_share() == (0.25, 0.25)


def test_ray_replicas_read_their_gpu_share(ray_session):
    """What Ray gave each actor reaches the cap (on this CPU nothing is capped: no model on CUDA)."""
    backend = RayBackend(ObjectiveSpec.of("synthetic"), count=2, num_gpus=0.5)
    try:
        assert [backend._get(a.gpu_share.remote()) for a in backend.actors] == [(0.5, None)] * 2
    finally:
        backend.close()


def test_replicas_asking_no_gpu_on_a_cluster_of_gpus_are_told_they_run_on_the_cpu(capsys):
    """`--workers 4` alone switches to Ray with num_gpus = 0: on a GPU machine a slow run, said."""
    assert check_resources([{"CPU": 8.0, "GPU": 2.0}], 4, 0.0, 1.0) == 4
    assert "note: the Ray cluster has 2 GPUs but workers.num_gpus = 0: the replicas run on the CPU; set " \
           "workers.num_gpus = 1, or a share of one (0.25 for 4 a GPU)" in capsys.readouterr().err
    assert check_resources([{"CPU": 8.0}], 4, 0.0, 1.0) == 4 and capsys.readouterr().err == ""


def test_a_replica_must_fit_on_one_node(capsys):
    """Two nodes of one GPU (one CPU) each hold 2 GPUs (CPUs) in all, but never a replica of 2:
    refused, not a hang; replicas that fit are counted node by node."""
    two = [{"CPU": 1.0, "GPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}]
    with pytest.raises(UserError, match="needs 2 GPUs and 1 CPUs on one node.*most on a node: 1 GPUs"):
        check_resources(two, 1, 2.0, 1.0)
    with pytest.raises(UserError, match="needs 0 GPUs and 2 CPUs on one node"):
        check_resources(two, 1, 0.0, 2.0)
    assert check_resources(two, 3, 1.0, 1.0) == 2 and "fits 2 of the 3 replicas" in capsys.readouterr().err
    # 3 CPUs on one node and 1 on another: replicas of 2 CPUs fit once, not twice (4 // 2)
    assert check_resources([{"CPU": 3.0}, {"CPU": 1.0}], 2, 0.0, 2.0) == 1
    # room for more on several nodes: the count asked for, not every replica that would fit
    assert check_resources([{"CPU": 2.0}, {"CPU": 2.0}], 2, 0.0, 1.0) == 2


def test_a_workers_death_is_told_by_the_line_that_says_why():
    """Ray's first line says only that the actor died; the note and the refusal quote the cause."""
    from longrope.search.cluster import death_reason

    ray_text = ("The actor died unexpectedly before finishing this task.\n\tclass_name: _Worker\n"
                "\tactor_id: 1f2e\nThe actor died because its node has died. Node Id: 9c1d\n")
    assert death_reason(RuntimeError(ray_text)) == "The actor died because its node has died. Node Id: 9c1d"
    assert death_reason(RuntimeError(ray_text.split("\n")[0])) == ray_text.split("\n")[0]  # nothing better
    assert death_reason(RuntimeError("")) == "RuntimeError"


@pytest.mark.parametrize("gpus, count, need, fits", [
    (2.0, 3, 0.6, 2),  # a fraction fits inside one GPU: 0.6 once on each (2 // 0.6 = 3 hung the driver)
    (8.0, 20, 0.4, 16),  # twice on each of 8, not 20
    (1.0, 10, 0.1, 10),  # ten on one (1 // 0.1 = 9 in floating point)
    (4.0, 4, 2.0, 2),
])
def test_gpu_fractions_are_counted_as_ray_places_them(gpus, count, need, fits):
    assert check_resources([{"CPU": 64.0, "GPU": gpus}], count, need, 0.5) == fits


def test_other_samplers_run_on_the_same_budget(tmp_path):
    for name in ("cmaes", "tpe", "random"):
        run, _ = run_small(tmp_path, name=name, sampler=name)
        rows = trajectory(run)["long-256"]
        assert len(rows) == 36 and sum(r[2] == "COMPLETE" for r in rows) >= 30
    cfg, _ = small_cfg()
    assert cfg.budget() == 36


@pytest.mark.parametrize("sampler", ["tpe", "cmaes"])
def test_tpe_and_cmaes_score_the_same_in_any_arrival_order(tmp_path, sampler):
    """TPE and CMA-ES read the scores at each ask. Until session 42 they read whatever had
    arrived, so on several workers the order results came back in steered the search. Now draw k
    reads the seeds and the draws below k - lag + 1 and is asked once they are scored, lag being
    the candidates the backend holds (4 here): two arrival orders score the same candidates. The
    lag is the search's: one candidate at a time (in process) reads more, and scores others."""
    runs = [run_small(tmp_path, name=f"order-{s}", backend_obj=ShuffledBackend(s), sampler=sampler)[0]
            for s in (0, 1)]
    assert trajectory(runs[0]) == trajectory(runs[1])
    (study,) = runs[0].studies()
    assert study.user_attrs["draw_lag"] == 4
    in_process, _ = run_small(tmp_path, name="in-process", sampler=sampler)
    assert trajectory(in_process) != trajectory(runs[0])


class CutAfter(ShuffledBackend):
    """A shuffled order, and a Ctrl-C as the driver submits the candidate after the `cut`-th."""

    def __init__(self, seed, cut):
        super().__init__(seed)
        self.cut, self.submitted = cut, 0

    def submit(self, job):
        self.submitted += 1
        if self.submitted > self.cut:
            raise KeyboardInterrupt
        super().submit(job)


class HoldsOneBack(ShuffledBackend):
    """Results in the order asked, but trial `held`'s only after `after`'s, then a Ctrl-C."""

    def __init__(self, held, after):
        super().__init__(0)
        self.held, self.after, self.stop = held, after, False

    def wait(self):
        if self.stop:
            raise KeyboardInterrupt
        job = min((j for j in self.pending if j.key != self.held), key=lambda j: j.key)
        self.pending.remove(job)
        self.stop = job.key == self.after
        return job.key, self.ev.evaluate(job.factors, job.length, job.threshold)


def interrupted_and_resumed(tmp_path, sampler, interrupting):
    """(run, reference): 24 evaluations (4 seeds, 20 draws) on four workers, the run stopped by
    the `interrupting` backend's Ctrl-C and resumed in another arrival order; the reference
    uninterrupted in a third. Each run's scored candidates, sorted (re-queued originals out)."""
    from longrope.runs import Run
    from longrope.runs.vocab import REQUEUED
    from longrope.search import config
    from longrope.search.driver import Driver

    def scored(run):
        (study,) = run.studies()
        return sorted((tuple(sorted(t.params.items())), t.value) for t in study.get_trials()
                      if not t.system_attrs.get(REQUEUED))

    cfg, _ = small_cfg(sampler=sampler, iterations=2)
    reference = Run.create(tmp_path / "reference", config.dumps(cfg))
    Driver(cfg, reference, progress=False, backend=ShuffledBackend(0)).run_all()
    run = Run.create(tmp_path / "run", config.dumps(cfg))
    with pytest.raises(KeyboardInterrupt):
        Driver(cfg, run, progress=False, backend=interrupting).run_all()
    Driver(cfg, run, progress=False, backend=ShuffledBackend(2)).run_all()
    return run, scored(run), scored(reference)


@pytest.mark.parametrize("sampler, cut", [("tpe", 9), ("tpe", 17), ("cmaes", 14), ("cmaes", 21)])
def test_tpe_and_cmaes_on_four_workers_interrupted_and_resumed_score_what_an_uninterrupted_run_does(
        tmp_path, sampler, cut):
    """Ctrl-C with four candidates out, resumed with results arriving in another order: the
    candidates an uninterrupted run on four workers scores (the stage keeps its lag; each draw,
    its copy included, reads what it read)."""
    _, got, want = interrupted_and_resumed(tmp_path, sampler, CutAfter(1, cut))
    assert got == want and len(got) == 24


@pytest.mark.parametrize("sampler", ["cmaes", "tpe"])
def test_a_copy_numbered_after_later_draws_is_read_in_its_draws_place(tmp_path, sampler):
    """Killed while draw 9 (trial 13, after 4 seeds) runs and draw 10 is scored, on four workers:
    draw 9's copy takes a number after draw 10's. CMA-ES takes a generation's first popsize (10)
    trials by number, and TPE orders what it reads by number: read in that order, the resumed run
    scored other candidates (review of session 42). They read every trial at the number an
    uninterrupted run gives it."""
    from longrope.runs.vocab import COPY_OF

    run, got, want = interrupted_and_resumed(tmp_path, sampler, HoldsOneBack(held=13, after=14))
    (study,) = run.studies()
    copy = next(t for t in study.get_trials() if t.user_attrs.get(COPY_OF) == 13)
    assert copy.number > 14 and study.trials[14].state.name == "COMPLETE"  # the order the samplers saw
    assert got == want and len(got) == 24


def test_early_stop_after_patience_without_improvement(tmp_path):
    from search_helpers import trajectory

    from longrope.runs import Run
    from longrope.search import config
    from longrope.search.driver import Driver

    cfg, _ = small_cfg(iterations=30)
    cfg.search.patience, cfg.search.min_improvement = 2, 0.5  # demand 50% better every 2 generations
    run = Run.create(tmp_path / "r", config.dumps(cfg))
    Driver(cfg, run, progress=False).run_all()
    rows = trajectory(run)["long-256"]
    assert len(rows) == 12 + 2 * 6  # generations 0, 1, 2; stopped before generation 3
    assert "early stop at generation 3" in (run.path / "events.log").read_text()
    cfg, _ = small_cfg(iterations=3)  # patience 0: no early stop (it stopped after generation 0)
    cfg.search.patience, cfg.search.min_improvement = 0, 0.5
    run = Run.create(tmp_path / "r0", config.dumps(cfg))
    Driver(cfg, run, progress=False).run_all()
    assert len(trajectory(run)["long-256"]) == 12 + 3 * 6


def test_a_resume_with_a_patience_that_would_not_stop_goes_on(tmp_path):
    """patience and min_improvement may change in a run: a stage stopped early under the old rule
    goes on when a resume's rule no longer stops it (the stored stop used to be final), and stays
    stopped when the rule is unchanged."""
    from search_helpers import trajectory

    from longrope.runs import Run
    from longrope.search import config
    from longrope.search.driver import Driver

    cfg, _ = small_cfg(iterations=30)
    cfg.search.patience, cfg.search.min_improvement = 2, 0.5
    run = Run.create(tmp_path / "r", config.dumps(cfg))
    Driver(cfg, run, progress=False).run_all()
    assert len(trajectory(run)["long-256"]) == 24
    Driver(cfg, run, progress=False).run_all()  # the same rule: still stopped
    assert len(trajectory(run)["long-256"]) == 24
    cfg.search.patience, cfg.search.min_improvement = 4, 0.5  # stops at generation 5 instead
    Driver(cfg, run, progress=False).run_all()
    assert len(trajectory(run)["long-256"]) == 12 + 4 * 6
    assert "early stop at generation 5" in (run.path / "events.log").read_text()
    cfg.search.patience = 0  # never stops: the whole budget
    Driver(cfg, run, progress=False).run_all()
    assert len(trajectory(run)["long-256"]) == cfg.budget()


def test_replacements_lost_with_their_nodes_do_not_count_as_failing_to_start(ray_session, monkeypatch):
    """Three replacement workers in a row that die before they start stop the run (a model that
    cannot load); replacements that went down with their node (preemption) say nothing of that,
    and three of them in a row aborted a run on a cluster losing spot nodes."""
    from longrope.objectives.perplexity import COMPLETE

    backend = RayBackend(ObjectiveSpec.of("synthetic:0.3"), count=1)
    real, lost = backend._get, []

    def preempted(ref):  # each replacement's first call: its node goes down under it
        if len(lost) < 4:
            e = ray_session.exceptions.RayActorError(preempted=True)
            lost.append(e)
            raise e
        return real(ref)

    try:
        backend._replace(backend.actors[0], RuntimeError("its node died"))
        monkeypatch.setattr(backend, "_get", preempted)
        while backend.starting:
            backend._step()
        assert len(lost) == 4 and backend.replaced == 5 and backend.start_failures == 0
        backend.submit(_job(0))
        key, ev = backend.wait()
        assert key == 0 and ev.status == COMPLETE
        # deaths that are not their node's: MAX_START_FAILURES in a row stop the run, naming Ray's reason
        monkeypatch.setattr(backend, "_get", lambda ref: (_ for _ in ()).throw(
            ray_session.exceptions.RayActorError(error_msg="The actor is dead because its worker exited")))
        backend._replace(backend.idle.pop(), RuntimeError("it died"))
        with pytest.raises(UserError, match=rf"^{MAX_START_FAILURES} workers died before they started: "
                                            "The actor is dead because its worker exited$"):
            while backend.starting:
                backend._step()
        assert backend.start_failures == MAX_START_FAILURES
    finally:
        backend.close()


def test_a_candidate_whose_workers_went_down_with_their_nodes_is_rerun_not_failed(ray_session, monkeypatch):
    """A spot cluster losing nodes: the candidate on each lost node is re-run, however often, since
    a node's loss says nothing against it (not MAX_DEATHS deaths and FAILED, as a candidate that
    kills its workers is). While a replacement starts, the job waiting for it leaves nothing free."""
    from longrope.objectives.perplexity import COMPLETE
    from longrope.search.backends import MAX_DEATHS

    backend = RayBackend(ObjectiveSpec.of("synthetic:0.3"), count=1)
    real_get, real_submit, evals, lost = backend._get, backend.submit, set(), []

    def submit(job, actor=None):
        real_submit(job, actor)
        evals.update(backend.inflight)

    def node_lost(ref):  # the evaluation's node goes down under it, MAX_DEATHS + 1 times
        if ref in evals and len(lost) <= MAX_DEATHS:
            evals.discard(ref)
            lost.append(ref)
            raise ray_session.exceptions.RayActorError(preempted=True)
        return real_get(ref)

    monkeypatch.setattr(backend, "submit", submit)
    monkeypatch.setattr(backend, "_get", node_lost)
    try:
        backend.submit(_job(0))
        key, ev = backend.wait()
        assert key == 0 and ev.status == COMPLETE and len(lost) == MAX_DEATHS + 1
        backend._replace(backend.actors[0], RuntimeError("its node died"))
        assert backend.free() == 1  # the replacement's, before anything waits for it
        backend.submit(_job(1))
        assert list(backend.queue) and backend.free() == 0
        assert backend.wait()[0] == 1
    finally:
        backend.close()


def test_workers_in_two_dtypes_are_refused_and_so_is_a_replacement_in_another(ray_session):
    """model.dtype = auto over GPUs of two generations loads bf16 on some workers and fp16 on
    others (here a third worker is forced to bf16 by its spec): one line, not a mixed ranking.
    A replacement that comes up in a dtype other than the search's is refused as it starts."""
    spec = ObjectiveSpec.of("builtin:tiny-sotu", threads=1, search_docs=1, heldout_docs=0)
    backend = RayBackend(spec, count=2)
    try:
        assert backend.precision() == "float32" and backend.dtype == "float32"
        odd = backend.actor_cls.remote(ObjectiveSpec.of("builtin:tiny-sotu", threads=1, search_docs=1,
                                                        heldout_docs=0, dtype="bfloat16"))
        backend.actors.append(odd)
        backend.idle.append(odd)
        with pytest.raises(UserError, match=r"the workers load the model in different dtypes "
                                            r"\(float32 on 2, bfloat16 on 1\)"):
            backend.precision()
        backend.ray.kill(odd)
        backend.actors.remove(odd)
        backend.idle.remove(odd)
        backend.dtype = "bfloat16"  # as if the search scored in bf16: a float32 replacement is refused
        os.kill(backend.worker_pids()[0], signal.SIGKILL)
        assert backend.idle[0] is backend.actors[0]
        assert backend._alive(backend.idle[0]) is False and backend.starting  # found dead, replaced
        with pytest.raises(UserError, match="a replacement worker loads the model in float32, where this "
                                            "search scores in bfloat16"):
            while backend.starting:
                backend._step()
    finally:
        backend.close()


@pytest.mark.parametrize("budget", [2, 4])
def test_a_comparison_sampler_scores_its_budget_when_its_seeds_fill_it(tmp_path, budget):
    """cmaes/tpe/random queue their seeds (the methods, the previous best) as WAITING trials, which
    counted as evaluations: with no more budget than seeds a stage scored nothing, printed done
    and exported the shorter target's factors."""
    from longrope.runs import Run
    from longrope.search import config
    from longrope.search.driver import Driver

    cfg, _ = small_cfg(sampler="cmaes")
    cfg.space.targets = [256, 512]
    cfg.search.max_evals = budget  # long-512's seeds: long-256's best and pi, ntk, yarn, dynamic_ntk
    run = Run.create(tmp_path / "r", config.dumps(cfg))
    Driver(cfg, run, progress=False).run_all()
    for name, rows in trajectory(run).items():
        assert sum(r[2] == "COMPLETE" for r in rows) == budget, (name, rows)
    assert run.best("long", 512) is not None


def test_generation_0_of_a_one_seed_stage_breeds_on_from_its_mutants(tmp_path):
    """A short stage with λmax = 1 has one seed (λ = 1, n̂ = 0) and 14 candidates (the n̂ set); a
    mutant moves n̂ one step, so the seed's own mutants reach n̂ 0 and 1 only, and generation 0
    was refused as "the space is too small" after the long stages had run."""
    from longrope.runs import Run
    from longrope.search import config
    from longrope.search.driver import Driver

    cfg, _ = small_cfg(short="[32]")
    cfg.space.lambda_max_ratio = 1.0
    cfg.search.max_evals = 12
    run = Run.create(tmp_path / "r", config.dumps(cfg))
    Driver(cfg, run, progress=False).run_all()
    rows = trajectory(run)["short-32"]
    assert len(rows) == 12 and len({str(r[1]) for r in rows}) == 12  # 12 distinct candidates
