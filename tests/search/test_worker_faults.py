"""Ray workers that fail other than by dying: a GPU that breaks under a worker (a CUDA error,
which leaves the process alive and useless), a worker lost while it loads, one that cannot load."""

import os
import re

import pytest
from search_helpers import run_small, trajectory

from longrope.objectives import workers
from longrope.objectives.perplexity import COMPLETE
from longrope.objectives.specs import ObjectiveSpec
from longrope.search.backends import MAX_START_FAILURES, RayBackend
from longrope.search.cluster import DeviceFault
from longrope.spaces import UserError

ILLEGAL_ACCESS = "CUDA error: an illegal memory access was encountered"


def job(key=0):
    from longrope.objectives.synthetic import GEOMETRY
    from longrope.search.backends import Job
    from longrope.spaces import RescaleFactors

    return Job(key, RescaleFactors.uniform(2.0, GEOMETRY.n_freqs), 256, None)


def backend_of(ray, worker_cls, count=2, num_cpus=1.0):
    class Backend(RayBackend):
        def _new_actor(self):
            cls = ray.remote(max_restarts=0)(worker_cls)
            return cls.options(num_gpus=0, num_cpus=self.num_cpus).remote(self.spec)

    return Backend(ObjectiveSpec.of("synthetic"), count=count, num_cpus=num_cpus)


def test_a_gpu_failing_once_under_a_worker_replaces_it_and_changes_nothing(tmp_path, ray_session, capsys):
    """The first worker to score the PI seed has its GPU fail (the process lives on, its CUDA
    context broken): it is killed and replaced, the candidate scored on another, and the run ends
    where one without the fault does. Until session 41 the error stopped the search (a traceback)."""
    flag, illegal = tmp_path / "faulted", ILLEGAL_ACCESS

    class FlakyGPU(workers._Worker):
        def evaluate(self, factors, length, threshold=None, pool="search"):
            if pool == "search" and set(factors.lambdas) == {256 / 64} and not flag.exists():  # PI, s = 4
                import torch

                flag.touch()  # what torch raises on a kernel that crashed its GPU (AcceleratorError since 2.8)
                raise torch.AcceleratorError(f"{illegal}\nCUDA kernel errors might be asynchronously reported")
            return super().evaluate(factors, length, threshold, pool)

    reference, _ = run_small(tmp_path, name="ref")
    backend = backend_of(ray_session, FlakyGPU)
    try:
        run, _ = run_small(tmp_path, backend_obj=backend, name="flaky")
    finally:
        backend.close()
    assert flag.exists() and backend.replaced == 1
    assert trajectory(run) == trajectory(reference)
    assert f"note: a worker's GPU failed (AcceleratorError: {ILLEGAL_ACCESS})" in capsys.readouterr().err


@pytest.mark.parametrize("crash", ["dies", "gpu fails"])
def test_a_candidate_that_kills_two_workers_is_failed_not_retried_forever(tmp_path, ray_session, crash):
    """The PI seed (uniform λ = s) kills whichever worker scores it (os._exit, as an out-of-memory
    kill in a kernel does), or breaks its GPU: recorded FAILED with the reason, the run goes on."""
    illegal = ILLEGAL_ACCESS

    class Poison(workers._Worker):
        def evaluate(self, factors, length, threshold=None, pool="search"):
            if pool == "search" and set(factors.lambdas) == {256 / 64}:  # the PI seed at s = 4
                if crash == "dies":
                    os._exit(1)
                raise RuntimeError(illegal)  # torch before 2.8: a plain RuntimeError
            return super().evaluate(factors, length, threshold, pool)

    backend = backend_of(ray_session, Poison)
    try:
        run, _ = run_small(tmp_path, backend_obj=backend)
    finally:
        backend.close()
    rows = trajectory(run)["long-256"]
    failed = [r for r in rows if r[2] == "FAIL"]
    assert len(failed) == 1 and {v for k, v in failed[0][1] if k.startswith("lambda")} == {4.0}
    assert backend.replaced == 2 and len(rows) == 12 + 4 * 6
    reason = "worker died 2 times while scoring it (out of memory or a crash?): "
    reason += f"RuntimeError: {ILLEGAL_ACCESS}" if crash == "gpu fails" else ""
    assert reason in (run.path / "events.log").read_text()


@pytest.mark.parametrize("count", [1, 3])
def test_workers_that_every_evaluation_ends_stop_the_run_in_one_line(tmp_path, ray_session, count):
    """An error every evaluation hits on the GPU (a tokenizer whose ids pass the model's vocabulary:
    a device-side assert) ended each worker: each candidate was charged two deaths (two model
    loads) and recorded failed, through the whole stage. max(MAX_IN_A_ROW, workers + 1) deaths
    with nothing scored between them stop the run, naming the last."""
    from longrope.search.cluster import MAX_IN_A_ROW

    tally = tmp_path / "deaths"
    tally.write_text("")

    class AssertsAlways(workers._Worker):
        def evaluate(self, factors, length, threshold=None, pool="search"):
            with tally.open("a") as f:
                f.write("x")
            raise RuntimeError("CUDA error: device-side assert triggered")

    backend = backend_of(ray_session, AssertsAlways, count=count, num_cpus=0.5)
    assert backend.count == count
    try:
        with pytest.raises(UserError, match=r"^(\d) workers in a row ended with nothing scored between them \(the "
                                            r"last: a worker's GPU failed: RuntimeError: CUDA error: device-side "
                                            r"assert triggered\): .*fix it and resume$") as e:
            run_small(tmp_path, backend_obj=backend)
    finally:
        backend.close()
    deaths = max(MAX_IN_A_ROW, count + 1)  # a replacement may begin another before the last death is read
    assert int(re.match(r"\d", str(e.value))[0]) == backend.replaced == deaths <= len(tally.read_text())


def test_deaths_of_one_replica_alone_do_not_stop_the_run():
    """One bad GPU (or short node) among healthy replicas: its slot's replacements die again and again
    while the others' evaluations, far longer, have not finished. Its own churn, not the run's stop;
    once every replica has died with nothing scored, the run stops (deaths or memory kills)."""
    import ray

    from longrope.search.cluster import DeathStreak

    fault = DeviceFault("RuntimeError: CUDA error: an illegal memory access was encountered")
    streak = DeathStreak()
    assert all(streak.stop(0, fault, replicas=4) is None for _ in range(20))  # slot 0 alone
    assert streak.stop(1, fault, 4) is None and streak.stop(2, fault, 4) is None
    assert streak.stop(3, ray.exceptions.RayActorError(preempted=True), 4) is None  # a lost node's: not counted
    stop = streak.stop(3, fault, 4)
    assert str(stop).startswith("23 workers in a row ended with nothing scored between them (the last: a "
                                "worker's GPU failed: RuntimeError: CUDA error: an illegal memory access")
    streak.clear()
    kill = ray.exceptions.OutOfMemoryError(MEMORY_KILL)
    assert streak.stop(0, kill, 1) is None and streak.stop(0, kill, 1) is None
    assert str(streak.stop(0, kill, 1)).startswith("Ray's memory monitor killed 3 workers with nothing scored")


# what ray.get raises for an actor's call when Ray's memory monitor killed its worker (Ray 2.60,
# seen with RAY_memory_usage_threshold set just above the node's use and an actor allocating)
MEMORY_KILL = ("1 worker(s) were killed due to the node running low on memory. Memory on the node (IP: "
               "192.0.2.2, ID: b96c3d9aef2b) was 3.50GB used / 23.54GB limit (0.148639)\nOOM kill reason: "
               "Memory usage 3734323200B exceeded threshold of 3707177472B (14.7% of 25276182528B limit)")


def killed_for_memory(backend, ray, first: int | None = None):
    """The backend's workers that die (os._exit) reach it as the memory monitor's kills do (the
    `first` deaths reported only, when given; the later ones as plain deaths)."""
    real, seen = backend._get, []

    def get(ref):
        try:
            return real(ref)
        except ray.exceptions.RayActorError:
            if first is not None and len(seen) >= first:
                raise
            seen.append(ref)
            raise ray.exceptions.OutOfMemoryError(MEMORY_KILL) from None

    backend._get = get
    return backend


def test_the_memory_monitors_kills_do_not_count_against_the_candidate(tmp_path, ray_session, capsys):
    """Ray's memory monitor kills the task that started last, whatever it scores (λ does not
    change what scoring holds in memory): the PI seed's worker killed twice by it does not make
    it FAILED, and the run ends where one without the kills does. Until session 42 it did."""
    kills = tmp_path / "kills"
    kills.write_text("0")

    class KilledForMemory(workers._Worker):
        def evaluate(self, factors, length, threshold=None, pool="search"):
            if pool == "search" and set(factors.lambdas) == {256 / 64} and int(kills.read_text()) < 2:
                kills.write_text(str(int(kills.read_text()) + 1))
                os._exit(1)
            return super().evaluate(factors, length, threshold, pool)

    reference, _ = run_small(tmp_path, name="ref")
    backend = killed_for_memory(backend_of(ray_session, KilledForMemory), ray_session)
    try:
        run, _ = run_small(tmp_path, backend_obj=backend, name="oom")
    finally:
        backend.close()
    assert kills.read_text() == "2" and backend.replaced == 2
    assert trajectory(run) == trajectory(reference)
    assert ("note: Ray's memory monitor killed a worker (1 worker(s) were killed due to the node running "
            "low on memory") in capsys.readouterr().err


@pytest.mark.parametrize("count", [1, 4])
def test_the_memory_monitors_kills_in_a_row_stop_the_run_in_one_line(ray_session, count):
    """Every worker killed for memory as it scores (the replicas need more than the node has): the
    run stops once the kills with nothing scored between them reach 3, and more than the replicas
    (a sweep that kills them all at once is not yet a pattern), instead of failing every candidate."""
    class Starved(workers._Worker):
        def evaluate(self, factors, length, threshold=None, pool="search"):
            os._exit(1)

    backend = killed_for_memory(backend_of(ray_session, Starved, count=count, num_cpus=0.5), ray_session)
    kills = max(3, count + 1)  # 3, and 5 for 4 replicas
    try:
        for key in range(count):
            backend.submit(job(key))
        with pytest.raises(UserError, match=rf"^Ray's memory monitor killed {kills} workers with nothing scored "
                                            r"between them \(1 worker\(s\) were killed due to the node running"):
            backend.wait()
        assert backend.replaced == kills
    finally:
        backend.close()


def test_memory_kills_between_finished_evaluations_do_not_stop_the_run(tmp_path, ray_session):
    """Only kills with nothing scored between them tell of a node too small: one worker killed
    for memory on every other evaluation (4 kills, each followed by a finished one) scores all."""
    n = tmp_path / "evaluations"
    n.write_text("0")

    class EveryOther(workers._Worker):
        def evaluate(self, factors, length, threshold=None, pool="search"):
            k = int(n.read_text())
            n.write_text(str(k + 1))
            if k % 2 == 0:
                os._exit(1)
            return super().evaluate(factors, length, threshold, pool)

    backend = killed_for_memory(backend_of(ray_session, EveryOther, count=1), ray_session)
    try:
        for key in range(4):
            backend.submit(job(key))
            got, ev = backend.wait()
            assert (got, ev.status) == (key, COMPLETE)
        assert backend.replaced == 4
    finally:
        backend.close()


def test_workers_the_memory_monitor_kills_as_they_load_stop_the_run_naming_it(ray_session):
    """Loading is where a replica's memory peaks: kills there stop the run with the memory line
    (what to do), not "a worker failed to start" with Ray's last line."""
    class DiesLoading(workers._Worker):
        def check(self, lengths):
            os._exit(1)

    backend = killed_for_memory(backend_of(ray_session, DiesLoading, count=1), ray_session)
    try:
        with pytest.raises(UserError, match=rf"^Ray's memory monitor killed {MAX_START_FAILURES} workers with "
                                            r"nothing scored between them \(1 worker\(s\) were killed"):
            backend.check([256])
    finally:
        backend.close()


def test_a_candidate_rerun_after_a_memory_kill_goes_only_to_a_worker_that_answers(ray_session, monkeypatch):
    """Both workers killed together, the busy one by the memory monitor: its candidate, re-run, must
    not be handed to the idle worker already dead, whose death would count against it (here one
    counted death fails a candidate). Until session 42 only a counted death made it a re-run."""
    import signal

    from longrope.search import backends

    monkeypatch.setattr(backends, "MAX_DEATHS", 1)
    backend = killed_for_memory(RayBackend(ObjectiveSpec.of("synthetic:0.3"), count=2), ray_session, first=1)
    try:
        busy, idle = backend.worker_pids()
        backend.submit(job(0))  # to the first worker
        os.kill(idle, signal.SIGKILL)
        os.kill(busy, signal.SIGKILL)
        key, ev = backend.wait()
        assert key == 0 and ev.status == COMPLETE, ev.reason
    finally:
        backend.close()


def test_a_bug_raised_in_a_worker_is_not_taken_for_a_failed_gpu(ray_session):
    """Any other exception is the code's, not the device's: it stops the run as it is (retrying
    it on every worker would turn a bug into a search of failed trials)."""
    class Buggy(workers._Worker):
        def evaluate(self, factors, length, threshold=None, pool="search"):
            raise RuntimeError("index 3 is out of bounds")

    backend = backend_of(ray_session, Buggy, count=1)
    try:
        backend.submit(job(0))
        with pytest.raises(ray_session.exceptions.RayTaskError, match="out of bounds"):
            backend.wait()
        assert backend.replaced == 0
    finally:
        backend.close()


@pytest.mark.parametrize("deaths", [1, MAX_START_FAILURES])
def test_a_worker_lost_while_it_loads_is_replaced(tmp_path, ray_session, capsys, deaths):
    """A worker that dies while it loads its model (its node preempted, killed for memory) is
    replaced, as one that dies during the search is; MAX_START_FAILURES in a row stop the run in
    one line. Until session 41 the first such death stopped it ("a worker failed to start")."""
    count = tmp_path / "deaths"
    count.write_text("0")

    class DiesLoading(workers._Worker):
        def check(self, lengths):
            n = int(count.read_text())
            if n < deaths:
                count.write_text(str(n + 1))
                os._exit(1)
            return super().check(lengths)

    backend = backend_of(ray_session, DiesLoading, count=1)
    try:
        if deaths >= MAX_START_FAILURES:
            with pytest.raises(UserError, match=rf"^{MAX_START_FAILURES} workers died before they "
                                                r"started: .*(exit|died)"):
                backend.check([256])
            return
        backend.check([256])
        assert backend.replaced == deaths and "a new worker is starting" in capsys.readouterr().err
        backend.submit(job(0))
        key, ev = backend.wait()
        assert key == 0 and ev.status == COMPLETE
    finally:
        backend.close()


def test_a_worker_whose_constructor_raises_stops_the_run_in_one_line(ray_session):
    """A model a worker cannot load fails every replacement alike: one line at once, no retries."""

    class CannotLoad(workers._Worker):
        def __init__(self, spec):
            raise RuntimeError("cannot read model.safetensors")

    backend = backend_of(ray_session, CannotLoad, count=1)
    try:
        with pytest.raises(UserError, match="a worker failed to start: .*cannot read model.safetensors"):
            backend.check([256])
        assert backend.replaced == 0
    finally:
        backend.close()


def test_which_errors_say_the_device_failed():
    """torch's errors from a broken GPU (AcceleratorError, or the RuntimeError of torch < 2.8, of
    cuBLAS/cuDNN and of Triton), not an out-of-memory error, torch's (the scorer halves its batch)
    or CUDA's (its one line: they were taken for a failed GPU), nor a bug's."""
    import torch

    from longrope.search.cluster import device_fault

    assert device_fault(torch.AcceleratorError("CUDA error: misaligned address"))
    assert device_fault(RuntimeError("CUDA error: device-side assert triggered"))
    assert device_fault(RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasGemmEx( ...)`"))
    assert not device_fault(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    # CUDA's own out of memory, outside torch's allocator, on a card its replicas fill: a full card
    assert not device_fault(torch.AcceleratorError("CUDA error: out of memory\nCUDA kernel errors might be ..."))
    assert not device_fault(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))
    assert device_fault(RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered"))
    assert device_fault(RuntimeError("CUDA driver error: unspecified launch failure"))
    assert not device_fault(RuntimeError("shape '[2, 3]' is invalid for input of size 7"))
    assert not device_fault(ValueError("CUDA error: but not from torch"))


def test_a_runtime_env_ray_cannot_set_up_is_one_line(monkeypatch):
    """`ray job submit --runtime-env` whose pip cannot install (a node that reaches no registry):
    one line naming pip's last word and what to do, not a traceback from inside Ray."""
    ray = pytest.importorskip("ray")
    from longrope.search.cluster import ray_get

    def fails(ref):
        raise ray.exceptions.RuntimeEnvSetupError(
            "Traceback (most recent call last):\n  File \"runtime_env_agent.py\", line 561\n"
            "RuntimeError: Failed to install pip requirements:\n"
            "ERROR: No matching distribution found for longrope-search==9.9\n")

    monkeypatch.setattr(ray, "get", fails)
    with pytest.raises(UserError, match=r"could not set up a worker's runtime_env .*: ERROR: No matching "
                                        r"distribution found for longrope-search==9.9; .*install longrope-search"):
        ray_get(None)


def test_a_worker_that_hangs_is_replaced_and_changes_nothing(tmp_path, ray_session, monkeypatch, capsys):
    """A GPU that hangs raises nothing: the first worker to score the PI seed never returns. Once
    it has run past its limit (STALL_FACTOR x the median of its kind, at least STALL_SECONDS) the
    worker is replaced and the candidate scored on another; the run ends where one without the
    hang does. Until session 41 the search waited on it forever, without a word."""
    from longrope.search import backends, stalls

    flag = tmp_path / "hang-flag"

    class HangsOnce(workers._Worker):
        def evaluate(self, factors, length, threshold=None, pool="search"):
            if pool == "search" and set(factors.lambdas) == {256 / 64} and not flag.exists():  # PI, s = 4
                import time

                flag.touch()
                time.sleep(3600)
            return super().evaluate(factors, length, threshold, pool)

    reference, _ = run_small(tmp_path, name="ref")
    # found as its limit passes: the wait for news ends then (it ended after WAIT_NOTE, 60 s)
    monkeypatch.setattr(backends, "WAIT_NOTE", 3600.0)
    monkeypatch.setattr(stalls, "STALL_SECONDS", 5.0)  # synthetic evaluations take milliseconds
    monkeypatch.setattr(stalls, "MIN_SEEN", 1)
    backend = backend_of(ray_session, HangsOnce)
    try:
        run, _ = run_small(tmp_path, backend_obj=backend, name="hung")
    finally:
        backend.close()
    assert flag.exists() and backend.replaced >= 1
    assert trajectory(run) == trajectory(reference)
    ran = re.search(r"note: a worker hung \(its evaluation ran (\d+) s", capsys.readouterr().err)
    assert ran and int(ran[1]) < 60, ran  # 5 s and a moment; the limit, not the next news, ended the wait


def test_the_stall_limit_is_a_multiple_of_the_median_of_its_kind():
    """No limit before MIN_SEEN evaluations of a kind (length, pool) have finished whole; then
    STALL_FACTOR x their median, at least STALL_SECONDS; a death's time does not count, nor an
    early abort's (it lowered the limit below a whole evaluation's time: the best candidates, which
    do not abort, were taken for hung). The wait for news ends as the first limit passes."""
    from longrope.search import stalls

    now = [0.0]
    watch = stalls.StallWatch(clock=lambda: now[0])
    for i, seconds in enumerate((100.0, 80.0, 120.0)):
        watch.start(i, (1024, "search"))
        now[0] += seconds
        watch.end(i)
    watch.start("died", (1024, "search"))
    now[0] += 9999.0
    watch.end("died", whole=False)
    for i in range(5):  # aborted early (pruned): short, and not the cost of a whole one
        watch.start(("pruned", i), (1024, "search"))
        now[0] += 1.0
        watch.end(("pruned", i), whole=False)
    assert watch.limit((1024, "search")) == 10 * 100.0 and watch.limit((2048, "search")) is None
    assert watch.wait(60.0) == 60.0  # nothing in flight: the wait for news is the longest
    watch.start("a", (1024, "search"))
    watch.start("b", (2048, "search"))  # no history: never stalled
    now[0] += 400.0
    assert watch.wait(60.0) == 60.0 and watch.wait(3600.0) == pytest.approx(600.05)  # until a's limit
    now[0] += 600.0
    assert watch.stalled() == [] and watch.wait(3600.0) == pytest.approx(0.05)
    now[0] += 1.0
    assert watch.stalled(besides=["a"]) == [] and watch.wait(3600.0) == 0.0  # "a" just answered
    [(ref, e)] = watch.stalled()
    assert ref == "a" and "ran 1001 s, over 1000 s (10x the median of 3 alike" in str(e)
    watch.took[(1, "search")] = [1.0] * 3
    assert watch.limit((1, "search")) == stalls.STALL_SECONDS
