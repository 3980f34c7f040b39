"""The fine-tune stage in a run (search/finetuning.py): later stages search the merged model,
kill -9 mid fine-tune resumes to the uninterrupted result, [finetune] is search-defining."""

import errno
import json
import os
import signal
import threading
import time
import tomllib

import psutil
import pytest
import torch
from safetensors.torch import load_file
from search_helpers import cli, trajectory

from longrope.objectives.specs import ObjectiveSpec
from longrope.runs import Run
from longrope.search import config
from longrope.search.driver import run_search
from longrope.search.plan import Plan
from longrope.spaces import UserError

RUN = """
[model]
path = "{model}"
threads = 1
[data]
path = "{data}"
search_docs = 2
heldout_docs = 1
[space]
targets = [64, 128]
short = [16]
[search]
population = 4
parents = 2
mutants = 1
crossovers = 1
iterations = 1
[finetune]
after = [64]
steps = {steps}
lr = 1e-2
warmup = 2
checkpoint_every = 20
batch_tokens = 128
s2_group = 16
"""


def _text(tiny_model_dir, text_corpus_dir, steps=150):
    return RUN.format(model=tiny_model_dir, data=text_corpus_dir, steps=steps)


def _progress(run_dir) -> int:
    try:
        return json.loads((run_dir / "finetune" / "ft-64" / "progress.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


def test_kill_9_mid_finetune_resumes_to_the_uninterrupted_run(tiny_model_dir, text_corpus_dir, tmp_path):
    cfg_path = tmp_path / "run.toml"
    cfg_path.write_text(_text(tiny_model_dir, text_corpus_dir))
    ref = cli("search", str(cfg_path), "--run-dir", str(tmp_path / "ref"), "--quiet")
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err
    killed = tmp_path / "killed"
    p = cli("search", str(cfg_path), "--run-dir", str(killed), "--quiet")
    end = time.time() + 120
    while _progress(killed) < 30 and p.poll() is None and time.time() < end:
        time.sleep(0.005)
    assert p.poll() is None, "the fine-tune ended before the kill"
    p.send_signal(signal.SIGKILL)
    p.wait()
    at_kill = _progress(killed)
    assert 30 <= at_kill < 150 and (killed / "finetune" / "ft-64" / "checkpoint.pt").exists()
    assert not (killed / "models" / "ft-64").exists()
    (killed / "models" / "ft-64.tmp").mkdir(parents=True)  # and the half copy a later kill would leave:
    (killed / "models" / "ft-64.tmp" / "config.json").write_text("{")  # apply refused a non-empty -o
    r = cli("resume", str(killed), "--quiet")
    _, err = r.communicate(timeout=300)
    assert r.returncode == 0, err
    assert not (killed / "models" / "ft-64.tmp").exists()
    a, b = Run.open(tmp_path / "ref"), Run.open(killed)
    # it continued from the last checkpoint (every 20 steps), and events.log says which
    assert f"finetune-64: resume from step {at_kill - at_kill % 20} on" in (killed / "events.log").read_text()
    assert trajectory(b) == trajectory(a)
    for kind, length in (("long", 64), ("long", 128), ("short", 16)):
        assert a.best(kind, length).lambdas == b.best(kind, length).lambdas
    wa = load_file(a.model_dir(64) / "model.safetensors")
    wb = load_file(b.model_dir(64) / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6, rtol=0) for k in wa)
    # the stages after the fine-tune searched the merged model, and say so
    assert b.best("long", 64).model == str(tiny_model_dir)
    assert b.best("long", 128).model == b.best("short", 16).model == str(b.model_dir(64))
    merged = json.loads((b.model_dir(64) / "config.json").read_text())
    assert merged["rope_scaling"]["long_factor"] == list(b.best("long", 64).lambdas)
    assert merged["original_max_position_embeddings"] == 32 and merged["max_position_embeddings"] == 64
    status = cli("status", str(killed), "--json")
    out, _ = status.communicate(timeout=60)
    (tune,) = json.loads(out)["finetunes"]
    assert (tune["step"], tune["steps"], tune["done"]) == (150, 150, True)
    _exports_name_the_model_they_fit(b, tiny_model_dir, tmp_path)


def _exports_name_the_model_they_fit(run, base_model, tmp_path):
    """long-128 and short-16 were searched on the fine-tune, long-64 on the base model: export
    warns when it pairs the two, apply when the factors go onto the base model, and the report's
    eval line names the fine-tuned model."""
    from longrope.runs.export import export
    from longrope.runs.report import write_report

    path, warnings = export(run)  # long-128 with short-16: one model, no warning
    assert not [w for w in warnings if "was searched on" in w]
    _, warnings = export(run, target=64, out=str(tmp_path / "mixed.json"))
    assert any(f"long-64 was searched on {base_model} and short-16 on {run.model_dir(64)}" in w for w in warnings)
    for model, warned in ((base_model, True), (run.model_dir(64), False)):
        a = cli("apply", str(path), str(model), "-o", str(tmp_path / f"applied-{warned}"))
        _, err = a.communicate(timeout=120)
        assert a.returncode == 0 and ("searched on the fine-tuned model" in err) == warned, err
    page = write_report(run).read_text()
    assert f"longrope eval --model {run.model_dir(64)} " in page


def test_a_changed_finetune_section_is_refused_on_resume(tiny_model_dir, text_corpus_dir, tmp_path):
    cfg = config.from_dict(tomllib.loads(_text(tiny_model_dir, text_corpus_dir, steps=3)))
    Run.create(tmp_path / "r", config.dumps(cfg))
    changed = config.from_dict(tomllib.loads(_text(tiny_model_dir, text_corpus_dir, steps=4)))
    with pytest.raises(UserError, match=r"another finetune.steps: 3 -> 4"):
        run_search(changed, str(tmp_path / "r"), progress=False)


@pytest.mark.parametrize("extra, message", [
    ("after = [96]", r"finetune.after: 96 is not one of space.targets \[64, 128\]"),
    ("after = [128, 64]", "finetune.after must be ascending"),
    ("after = [64]\ns2_group = 24", "s2_group = 24 must be even and divide the target length 64"),
    ("after = [64]\ns2_group = 7", "s2_group = 7 must be even"),
    ("after = [64]\nlora_targets = []", "lora_targets is empty"),
    ("after = [64]\nsteps = 0", "finetune.steps = 0 must be >= 1"),
])
def test_bad_finetune_sections_are_refused(extra, message):
    text = f"[space]\ntargets = [64, 128]\n[finetune]\n{extra}\n"
    with pytest.raises(UserError, match=message):
        config.from_dict(tomllib.loads(text))


def test_an_in_process_finetune_starts_with_the_scoring_model_let_go(tiny_model_dir, text_corpus_dir):
    """On a GPU the scoring model would sit beside the fine-tune's own copy: it is freed first,
    and the next stage's workers load the fine-tuned model."""
    import weakref

    plan = Plan(config.from_dict(tomllib.loads(_text(tiny_model_dir, text_corpus_dir))))
    plan.start_backend()
    model = weakref.ref(plan.backend.evaluator.loaded.model)
    alive: list[bool] = []
    plan.use_model(lambda: alive.append(model() is not None) or str(tiny_model_dir / "ft"))
    assert alive == [False] and plan.backend is None and plan.spec.model.path == str(tiny_model_dir / "ft")


def test_the_synthetic_objective_cannot_finetune():
    cfg = config.from_dict(tomllib.loads('[model]\npath = "synthetic"\n[space]\ntargets = [256]\n'
                                         '[finetune]\nafter = [256]\n'))
    with pytest.raises(UserError, match="synthetic objective has no weights to fine-tune"):
        Plan(cfg)


def _kill_the_finetune_task_at(run_dir, step: int, killed: list) -> threading.Thread:
    """A thread that SIGKILLs the Ray worker running the fine-tune (what the OOM killer or a lost
    node does) once run_dir's fine-tune has passed `step`; the pid goes into `killed`."""

    def kill():
        end = time.time() + 600  # a step a second beside a bench and another suite on 2 cores
        while _progress(run_dir) < step and time.time() < end:
            time.sleep(0.002)
        for proc in psutil.Process().children(recursive=True):  # this session's Ray, not another worker's
            try:
                if (proc.cmdline() or [""])[0].startswith("ray::finetune"):
                    proc.kill()
                    killed.append(proc.pid)
            except psutil.NoSuchProcess:
                pass

    t = threading.Thread(target=kill, daemon=True)
    t.start()
    return t


def test_the_finetune_runs_as_a_ray_task_and_survives_its_worker_lost(tiny_model_dir, text_corpus_dir, tmp_path,
                                                                       ray_session, monkeypatch):
    """On Ray the fine-tune equals the in-process one, with its worker killed after a checkpoint:
    Ray runs the task again, from that checkpoint. With no retries left the driver stops in one
    line, the checkpoint kept for a resume."""
    from longrope.search import finetuning

    text = _text(tiny_model_dir, text_corpus_dir, steps=60).replace("targets = [64, 128]", "targets = [64]")
    text = text.replace("short = [16]", "short = []")
    here = config.from_dict(tomllib.loads(text))
    on_ray = config.from_dict(tomllib.loads(text + '[workers]\nbackend = "ray"\n'))
    run_search(here, str(tmp_path / "here"), progress=False)
    a = Run.open(tmp_path / "here")
    wa = load_file(a.model_dir(64) / "model.safetensors")

    def same_model(run_dir):
        b = Run.open(run_dir)
        wb = load_file(b.model_dir(64) / "model.safetensors")
        assert all(torch.allclose(wa[k], wb[k], atol=1e-6, rtol=0) for k in wa)
        rec = json.loads((b.finetune_dir(64) / "training.json").read_text())
        assert len(rec["losses"]) == 60 and "finetune-64: done" in (b.path / "events.log").read_text()

    killed: list[int] = []
    t = _kill_the_finetune_task_at(tmp_path / "ray", 22, killed)
    run_search(on_ray, str(tmp_path / "ray"), progress=False)  # Ray retries the task
    t.join()
    assert killed
    same_model(tmp_path / "ray")

    monkeypatch.setattr(finetuning, "RETRIES", 0)
    killed.clear()
    t = _kill_the_finetune_task_at(tmp_path / "again", 22, killed)
    with pytest.raises(UserError, match="fine-tune's Ray worker was lost 1 times.*resume. continues it"):
        run_search(on_ray, str(tmp_path / "again"), progress=False)
    t.join()
    # what a resume continues from (resuming from it is test_kill_9_mid_finetune_resumes_...'s)
    assert killed and (tmp_path / "again" / "finetune" / "ft-64" / "checkpoint.pt").exists()
    assert not Run.open(tmp_path / "again").model_dir(64).exists()


def test_a_finetune_on_ray_gets_the_resources_its_scoring_workers_held(tiny_model_dir, text_corpus_dir,
                                                                        tmp_path, ray_session):
    """Two replicas of one CPU fill the session's 2 CPUs; the fine-tune task asks for one: the
    workers must be stopped before it is submitted, or it waits for them forever."""
    text = _text(tiny_model_dir, text_corpus_dir, steps=4).replace("short = [16]", "short = []")
    cfg = config.from_dict(tomllib.loads(text + '[workers]\nbackend = "ray"\ncount = 2\nnum_cpus = 1\n'))
    done: list[str] = []
    t = threading.Thread(target=lambda: done.append(run_search(cfg, str(tmp_path / "r"), progress=False)),
                         daemon=True)
    t.start()
    t.join(timeout=600)  # 12 s alone; over 240 s beside a bench on 2 cores (waiting for the CPUs is forever)
    assert done and not t.is_alive(), "the fine-tune waited for the scoring workers' CPUs"
    run = Run.open(tmp_path / "r")
    assert run.model_dir(64).is_dir() and run.best("long", 128) is not None


def test_sigterm_during_a_ray_finetune_exits_143(tiny_model_dir, text_corpus_dir, tmp_path):
    """The driver waits in ray.get for the fine-tune task, where Ray raises a KeyboardInterrupt of
    its own for the handler's: still SIGTERM's exit code and line (a scheduler reads 143 as
    preempted, 130 as a user's Ctrl-C)."""
    cfg_path = tmp_path / "run.toml"
    cfg_path.write_text(_text(tiny_model_dir, text_corpus_dir) + '[workers]\nbackend = "ray"\n')
    p = cli("search", str(cfg_path), "--run-dir", str(tmp_path / "r"), "--quiet")
    end = time.time() + 300  # the search before it takes ~15 s alone, minutes on a loaded machine
    while _progress(tmp_path / "r") < 5 and p.poll() is None and time.time() < end:
        time.sleep(0.05)
    assert p.poll() is None, "the fine-tune ended before the signal"
    assert _progress(tmp_path / "r") >= 5, "the fine-tune had not started: the signal would test something else"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143 and "interrupted (SIGTERM)" in err, err[:3000]
    assert "LeaseLost" not in err, "the cancelled task trained on past the released lease"


def test_an_interrupted_driver_waits_until_its_cancelled_finetune_task_has_ended(tmp_path, ray_session,
                                                                                 monkeypatch):
    """Ctrl-C or SIGTERM while the fine-tune trains on Ray: the task is cancelled and the driver
    returns only once it has ended. Going on at once left it training past the released lease
    (LeaseLost at its next step), and a cancel reply that came during Ray's shutdown crashed the
    driver (exit 1, not 143)."""
    from longrope.search import cluster, finetuning
    from longrope.search.schema import WorkersConfig

    pid_file = tmp_path / "pid"

    def trains(*args, **kw):  # nested: Ray ships it by value
        pid_file.write_text(str(os.getpid()))
        time.sleep(300)

    refs = []

    def interrupted_once_it_trains(ref):
        refs.append(ref)
        end = time.time() + 120
        while not pid_file.exists() and time.time() < end:
            time.sleep(0.02)
        raise KeyboardInterrupt

    monkeypatch.setattr(finetuning, "finetune", trains)
    monkeypatch.setattr(cluster, "ray_get", interrupted_once_it_trains)
    with pytest.raises(KeyboardInterrupt):
        finetuning._on_ray(WorkersConfig(backend="ray", num_cpus=1), ObjectiveSpec.of("synthetic"))
    # Ray had seen the task end (its worker's exit) when the driver went on: without the wait, it
    # had not yet. The process itself may take a moment more to be gone on a loaded machine (once
    # in CI it was still there when looked at), but it was killed, not left training.
    assert ray_session.wait(refs, timeout=0)[0], "the driver went on before its cancelled task ended"
    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    pid, end = int(pid_file.read_text()), time.time() + 10
    while running(pid) and time.time() < end:
        time.sleep(0.01)
    assert not running(pid), "the cancelled fine-tune task still ran"


def test_a_full_disk_inside_a_ray_task_reaches_the_driver_as_its_one_line(tmp_path, ray_session):
    """A fine-tune on Ray writes its checkpoints to the run: a full disk there comes back as the
    OSError (which the driver words as for its own writes); any other error keeps Ray's remote
    traceback (a bug should show where it is)."""
    from longrope.search.cluster import ray_get

    def raises(code):
        raise OSError(code, os.strerror(code), "ft-64/checkpoint.pt")

    task = ray_session.remote(num_cpus=0)(raises)
    with pytest.raises(OSError) as full:
        ray_get(task.remote(errno.ENOSPC))
    assert (full.value.errno, full.value.filename) == (errno.ENOSPC, "ft-64/checkpoint.pt")
    assert "cannot write ft-64/checkpoint.pt: No space left on device" in str(Run(tmp_path).write_failed(full.value))
    with pytest.raises(ray_session.exceptions.RayTaskError):
        ray_get(task.remote(errno.ENOENT))


def test_a_gpu_failing_under_a_ray_finetune_is_one_line(ray_session, monkeypatch):
    """A CUDA error inside the fine-tune task (its process lives on, its context broken) was a
    traceback from Ray; now one line naming it and the resume, as a lost worker is."""
    from longrope.search import finetuning
    from longrope.search.schema import WorkersConfig

    def broken(spec, *args, **kw):  # nested: Ray ships it by value
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(finetuning, "finetune", broken)
    with pytest.raises(UserError, match=r"the fine-tune's GPU failed \(RuntimeError: CUDA error: an illegal "
                                        r"memory access was encountered\); `longrope resume` continues it"):
        finetuning._on_ray(WorkersConfig(backend="ray"), ObjectiveSpec.of("synthetic"))


def node_c_takes_over(run_dir) -> None:
    """Another driver's live lease in run.lock: node-c resumed the run."""
    (run_dir / "run.lock").write_text(json.dumps({"host": "node-c", "pid": 4242, "heartbeat": time.time(),
                                                  "started": time.time(), "token": "theirs"}))


def search_taken_over_at(monkeypatch, owner, name: str, text: str, run_dir) -> None:
    """The search of `text`, node-c taking the run over each time owner.name is called: this
    driver stops in one line naming node-c."""
    real = getattr(owner, name)

    def taken_over_then(*args, **kw):
        node_c_takes_over(run_dir)
        return real(*args, **kw)

    monkeypatch.setattr(owner, name, taken_over_then)
    with pytest.raises(UserError, match="now held by pid 4242 on node-c"):
        run_search(config.from_dict(tomllib.loads(text)), str(run_dir), progress=False)


def test_a_driver_taken_over_during_the_finetune_writes_no_model(tiny_model_dir, text_corpus_dir, tmp_path,
                                                                monkeypatch):
    """The lease is looked at when the fine-tune returns: a driver taken over while it trained
    (node-c resumed the run) stops before it writes the merged model or any later stage."""
    from longrope.search import finetuning

    text = _text(tiny_model_dir, text_corpus_dir, steps=2).replace("short = [16]", "short = []")
    run_dir = tmp_path / "r"
    real = finetuning._here

    def here_then_taken_over(*args, **kw):
        record = real(*args, **kw)
        node_c_takes_over(run_dir)
        return record

    monkeypatch.setattr(finetuning, "_here", here_then_taken_over)
    with pytest.raises(UserError, match="now held by pid 4242 on node-c"):
        run_search(config.from_dict(tomllib.loads(text)), str(run_dir), progress=False)
    run = Run.open(run_dir)
    assert not run.model_dir(64).exists() and [s.study_name for s in run.studies()] == ["long-64"]


def test_a_driver_taken_over_as_its_finetune_begins_writes_nothing_of_it(tiny_model_dir, text_corpus_dir,
                                                                         tmp_path, monkeypatch):
    """Taken over between the stage's end and the fine-tune's start: the lease is looked at before
    the fine-tune's first write, so neither trained_with.json (which the new holder's fine-tune
    would then keep, with factors it may not have) nor an event line lands in the run."""
    from longrope.search import driver, finetuning

    text = _text(tiny_model_dir, text_corpus_dir, steps=2).replace("short = [16]", "short = []")
    run_dir = tmp_path / "r"
    search_taken_over_at(monkeypatch, driver, "finetune_stage", text, run_dir)
    run = Run.open(run_dir)
    assert not (run.finetune_dir(64) / finetuning.TRAINED_WITH).exists()
    assert "finetune-64" not in (run_dir / "events.log").read_text()


def test_a_driver_taken_over_while_it_trains_writes_no_checkpoint(tiny_model_dir, text_corpus_dir, tmp_path,
                                                                  monkeypatch):
    """The lease is looked at before each training step's writes: a driver taken over during a
    step (node-c resumed the run and continues the fine-tune) leaves the checkpoint, the progress
    file and the model folder to node-c."""
    from longrope.objectives import finetune

    text = _text(tiny_model_dir, text_corpus_dir, steps=2).replace("short = [16]", "short = []")
    text = text.replace("checkpoint_every = 20", "checkpoint_every = 1")
    run_dir = tmp_path / "r"
    search_taken_over_at(monkeypatch, finetune, "step_loss", text, run_dir)
    work = Run.open(run_dir).finetune_dir(64)  # what it trains with, written while it held the run
    assert sorted(p.name for p in work.iterdir()) == ["trained_with.json"]
    assert not Run.open(run_dir).model_dir(64).exists()


def test_a_finished_finetune_removes_the_merge_a_kill_left_behind(tmp_path):
    """Killed after the merged model was renamed into place but before its working copy (a whole
    model's size) was removed: the next driver finds the fine-tune done, and removes the copy."""
    from search_helpers import small_cfg

    from longrope.search import config as config_mod
    from longrope.search.finetuning import finetune_stage

    cfg, _ = small_cfg()
    run = Run.create(tmp_path / "r", config_mod.dumps(cfg))
    run.model_dir(64).mkdir(parents=True)
    (run.model_dir(64) / "config.json").write_text("{}")
    (run.finetune_dir(64) / "merged").mkdir(parents=True)
    (run.finetune_dir(64) / "merged" / "model.safetensors").write_bytes(b"\0" * 1024)
    assert finetune_stage(run, None, None, None, 64) == str(run.model_dir(64).absolute())
    assert not (run.finetune_dir(64) / "merged").exists()


def test_a_finetune_trained_with_factors_its_stage_has_since_improved_on_is_said(tmp_path, capsys):
    """A resume with a larger budget moved long-L's best after its fine-tune was done: the later
    stages search a model trained with the old factors, which is said, with how to redo it."""
    from search_helpers import run_small

    from longrope.search.finetuning import finetune_stage

    run, _ = run_small(tmp_path)
    best = run.best("long", 256)
    for trained, said in ((list(best.lambdas), False), ([1.0] * len(best.lambdas), True)):
        run.model_dir(256).mkdir(parents=True, exist_ok=True)
        (run.model_dir(256) / "config.json").write_text(json.dumps({"rope_scaling": {"long_factor": trained}}))
        finetune_stage(run, None, None, None, 256)
        assert ("was fine-tuned with the factors long-256 had then" in capsys.readouterr().err) == said


def test_a_ray_finetune_of_a_relative_run_dir_gets_absolute_paths(tmp_path, monkeypatch):
    """`--run-dir runs/x` (the README's form) on a cluster: the task resolved its checkpoint folder,
    merged model and lock file in its node's own folder, found no lock there and the driver
    stopped with "taken over while this driver was unresponsive"."""
    from types import SimpleNamespace

    from search_helpers import run_small

    from longrope.objectives.specs import FinetuneSpec
    from longrope.runs.lease import Lease
    from longrope.search import finetuning
    from longrope.search.schema import WorkersConfig

    run, _ = run_small(tmp_path)
    monkeypatch.chdir(tmp_path)
    rel = Run.open(os.path.relpath(run.path, tmp_path))
    got = {}

    def on_ray(workers, spec, ft, factors, length, work, merged, check=None, home=None):
        got.update(work=work, merged=merged, home=home, ticket=check.path)
        raise KeyboardInterrupt  # what it trained is not the point

    monkeypatch.setattr(finetuning, "_on_ray", on_ray)
    with Lease(rel.path / "run.lock") as lease, pytest.raises(KeyboardInterrupt):
        finetuning.finetune_stage(rel, SimpleNamespace(model=SimpleNamespace(path="m")), FinetuneSpec(),
                                  WorkersConfig(backend="ray"), 256, check=lease.ticket())
    assert all(os.path.isabs(p) for p in got.values()), got


def test_a_finetune_resumed_after_its_stage_improved_goes_on_with_its_own_factors(tmp_path, capsys, monkeypatch):
    """A driver killed mid fine-tune, resumed with a larger budget: the stage's best moved, and the
    checkpoint (trained with the old factors) was refused as another fine-tune's on every resume.
    It goes on with the factors it started with, saying so; a fresh start takes the stage's best."""
    import dataclasses
    from types import SimpleNamespace

    from search_helpers import run_small

    from longrope.objectives.finetune import CHECKPOINT
    from longrope.objectives.specs import FinetuneSpec
    from longrope.search import finetuning

    run, _ = run_small(tmp_path)
    best, spec = run.best("long", 256), SimpleNamespace(model=SimpleNamespace(path="m"))
    trained = []

    class Stop(Exception):
        pass

    def here(spec, ft, factors, *a, **kw):
        trained.append(factors)
        raise Stop

    monkeypatch.setattr(finetuning, "_here", here)
    with pytest.raises(Stop):  # a first start: the stage's best, kept beside the checkpoint
        finetuning.finetune_stage(run, spec, FinetuneSpec(), config.WorkersConfig(), 256)
    work = run.finetune_dir(256)
    assert trained.pop() == best.factors
    assert finetuning.BestRecord.load(work / finetuning.TRAINED_WITH) == best
    (work / CHECKPOINT).write_bytes(b"")  # it trained, then was killed
    newer = dataclasses.replace(best, lambdas=tuple(x + 0.01 for x in best.lambdas), evals=best.evals + 12)
    run.write_best(newer)  # a resume with a larger budget found a better one
    with pytest.raises(Stop):
        finetuning.finetune_stage(run, spec, FinetuneSpec(), config.WorkersConfig(), 256)
    assert trained.pop() == best.factors
    assert "finetune-256 goes on with the factors it started with" in capsys.readouterr().err
    (work / CHECKPOINT).unlink()  # killed before its first checkpoint: nothing trained to keep
    with pytest.raises(Stop):
        finetuning.finetune_stage(run, spec, FinetuneSpec(), config.WorkersConfig(), 256)
    assert trained.pop() == newer.factors and "goes on with" not in capsys.readouterr().err
