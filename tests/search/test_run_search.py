"""run_search: everything is checked before the run directory is touched, the backend once;
the samplers' table is the config's choice list."""

import json
import re

import pytest
from search_helpers import run_small, small_cfg, trajectory

from longrope.objectives.specs import ObjectiveSpec
from longrope.runs import Run
from longrope.runs.lease import Lease
from longrope.runs.status import render_status
from longrope.search import config, plan
from longrope.search.backends import InProcessBackend
from longrope.search.driver import Driver, run_search
from longrope.search.proposers import SAMPLERS, GAProposer, OptunaProposer, make_proposer
from longrope.search.sampler import from_params
from longrope.search.stages import initial_factors, make_stages
from longrope.spaces import UserError


class CountingBackend(InProcessBackend):
    def __init__(self):
        super().__init__(ObjectiveSpec.of("synthetic"))
        self.checks, self.closed = 0, 0

    def check(self, lengths):
        self.checks += 1
        return super().check(lengths)

    def close(self):
        self.closed += 1  # Ray actors killed twice, say


def snapshot(path):
    return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else b"") for p in path.rglob("*"))


def test_the_backend_is_checked_once_and_a_given_one_is_left_open(tmp_path):
    cfg, _ = small_cfg(iterations=1)
    backend = CountingBackend()
    results = run_search(cfg, str(tmp_path / "r"), progress=False, backend=backend)
    assert backend.checks == 1 and not backend.closed and list(results) == ["long-256"]
    run = Run.open(tmp_path / "r")
    assert "driver start" in (run.path / "events.log").read_text() and not (run.path / "run.lock").exists()
    again = CountingBackend()  # a resume checks its backend once too, and evaluates nothing new
    run_search(cfg, str(tmp_path / "r"), resume=True, progress=False, backend=again)
    assert again.checks == 1 and len(trajectory(run)["long-256"]) == 12 + 6


def test_a_driver_given_a_backend_checks_it_once(tmp_path):
    cfg, _ = small_cfg(iterations=0)
    backend = CountingBackend()
    run = Run.create(tmp_path / "r", config.dumps(cfg))
    d = Driver(cfg, run, progress=False, backend=backend)
    d.start_backend()
    d.run_all()
    assert backend.checks == 1 and d.backend is backend


@pytest.mark.parametrize("resume", [False, True])
def test_a_non_run_is_refused_before_the_backend_starts_and_left_as_is(tmp_path, resume):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    before = snapshot(junk)
    backend = CountingBackend()
    cfg, _ = small_cfg(iterations=1)
    message = "is not a run directory" if resume else "exists and is not empty"
    with pytest.raises(UserError, match=message):
        run_search(cfg, str(junk), resume=resume, progress=False, backend=backend)
    assert backend.checks == 0 and snapshot(junk) == before
    with pytest.raises(UserError, match="is a file, not a run directory" if resume else "is not a directory"):
        run_search(cfg, str(junk / "notes.txt"), resume=resume, progress=False, backend=backend)
    if resume:
        with pytest.raises(UserError, match="does not exist"):
            run_search(cfg, str(tmp_path / "missing"), resume=True, progress=False, backend=backend)
        assert not (tmp_path / "missing").exists()
    assert backend.checks == 0 and snapshot(junk) == before


def test_a_made_backend_is_closed_also_when_the_run_is_locked(tmp_path, monkeypatch):
    cfg, _ = small_cfg(iterations=0)
    run_search(cfg, str(tmp_path / "r"), progress=False, backend=CountingBackend())
    made = []
    monkeypatch.setattr(plan, "make_backend", lambda spec, workers: made.append(CountingBackend()) or made[-1])
    with Run.open(tmp_path / "r").lock(), pytest.raises(UserError, match="in use by pid"):
        run_search(cfg, str(tmp_path / "r"), progress=False)
    assert made == []  # refused before the workers start
    with Run.open(tmp_path / "r").lock(), pytest.raises(UserError, match="in use by pid"):
        monkeypatch.setattr(Lease, "precheck", lambda self: None)  # the lock taken just after the look
        run_search(cfg, str(tmp_path / "r"), progress=False)
    assert made[0].checks == 1 and made[0].closed == 1
    run_search(cfg, str(tmp_path / "r"), progress=False)
    assert made[1].checks == 1 and made[1].closed == 1  # once, though run_search and the driver both close


def test_a_failing_backend_check_creates_no_run_directory(tmp_path):
    class Refusing(CountingBackend):
        def check(self, lengths):
            raise UserError("no document reaches 256 tokens")

    cfg, _ = small_cfg(iterations=1)
    with pytest.raises(UserError, match="no document reaches"):
        run_search(cfg, str(tmp_path / "r"), progress=False, backend=Refusing())
    assert not (tmp_path / "r").exists()


def test_the_samplers_table_is_the_config_choice_list():
    assert set(config._CHOICES["search.sampler"]) == set(SAMPLERS) == {"longrope", "cmaes", "tpe", "random"}
    assert all(isinstance(help_, str) and help_ for _, help_ in SAMPLERS.values())
    from longrope.search.plan import preflight_geometry

    for name, kind in (("longrope", GAProposer), ("cmaes", OptunaProposer), ("random", OptunaProposer)):
        cfg, _ = small_cfg(sampler=name)
        g = preflight_geometry(cfg)
        stage = make_stages(cfg, g)[0]
        assert type(make_proposer(cfg, stage, initial_factors(cfg, stage, g, None))) is kind


class HeldoutFails(InProcessBackend):
    """Scores the search like InProcessBackend; the held-out pool fails `fails` times (its
    workers died twice, say)."""

    def __init__(self, fails):
        super().__init__(ObjectiveSpec.of("synthetic"))
        self.fails = fails

    def evaluate_pool(self, factors, length, pool):
        from longrope.objectives.perplexity import FAILED, Evaluation

        if self.fails:
            self.fails -= 1
            return Evaluation(factors, length, FAILED, float("inf"), reason="its worker died 2 times")
        return super().evaluate_pool(factors, length, pool)


def test_a_failed_heldout_score_is_said_not_kept_as_inf_and_tried_again_on_resume(tmp_path, capsys):
    cfg, _ = small_cfg(iterations=1)
    run_search(cfg, str(tmp_path / "r"), progress=False, backend=HeldoutFails(1))
    run = Run.open(tmp_path / "r")
    assert run.best("long", 256).heldout_ppl is None
    assert "long-256: held-out scoring failed (its worker died 2 times)" in (run.path / "events.log").read_text()
    assert "warning: long-256: the best factors' held-out scoring failed" in capsys.readouterr().err
    run_search(cfg, str(tmp_path / "r"), progress=False, backend=HeldoutFails(0))
    ppl = Run.open(tmp_path / "r").best("long", 256).heldout_ppl
    assert ppl is not None and ppl < float("inf")


def test_a_heldout_score_cached_before_its_text_was_recorded_is_kept():
    """An older run's cache has no text hash: re-scoring it would cost hours at long lengths. One
    with a hash is kept for that text and that trial only."""
    import optuna

    from longrope.runs import vocab
    from longrope.search.stagecheck import cached_heldout

    study = optuna.create_study()
    study.set_user_attr(vocab.HELDOUT, {"trial": 3, "ppl": 5.0})
    assert cached_heldout(study, 3, "abc") == 5.0 and cached_heldout(study, 4, "abc") is None
    study.set_user_attr(vocab.HELDOUT, {"trial": 3, "ppl": 5.0, "text": "abc"})
    assert cached_heldout(study, 3, "abc") == 5.0 and cached_heldout(study, 3, "edited") is None


def test_a_model_that_already_scales_its_rotary_is_said_before_the_search(tiny_model_dir, tmp_path, capsys):
    """Llama-3.1's llama3 scaling (or an applied longrope) is not what candidates are scored
    against: plain θ at L0 is. The search says so: the factors it finds replace that scaling."""
    import json
    import shutil

    from longrope.search.plan import preflight_geometry
    from longrope.spaces import own_scaling

    assert own_scaling({"rope_scaling": {"type": "yarn", "factor": 4}}) == "yarn"
    assert own_scaling({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}) is None
    assert own_scaling({"rope_theta": 1e4}) is None
    src = tmp_path / "llama31"
    shutil.copytree(tiny_model_dir, src)
    cfg_json = json.loads((src / "config.json").read_text())
    cfg_json["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    cfg_json.pop("rope_parameters", None)
    (src / "config.json").write_text(json.dumps(cfg_json))
    for folder, said in ((tiny_model_dir, False), (src, True)):
        cfg, _ = small_cfg(model=str(folder))
        preflight_geometry(cfg)
        err = capsys.readouterr().err
        assert ("already scales its rotary (llama3)" in err and "at L0 = 32" in err) == said, err


def test_a_fixed_lambda_max_bounds_the_long_stages_only(capsys):
    """space.lambda_max = 10 for a 4x target left the short stage searching λ in [1, 10] too."""
    from longrope.objectives.synthetic import GEOMETRY

    cfg, _ = small_cfg(short="[32]")
    cfg.space.lambda_max = 10.0
    long, short = make_stages(cfg, GEOMETRY)
    assert (long.kind, long.space.lambda_max) == ("long", 10.0)
    assert (short.kind, short.space.lambda_max) == ("short", 1.25)  # ratio · 1, as without it
    assert capsys.readouterr().err == ""
    cfg.space.lambda_max = 1.5  # below s: PI and every seed clipped, said
    make_stages(cfg, GEOMETRY)
    s = long.length / GEOMETRY.original_length
    assert f"note: space.lambda_max = 1.5 is below s = {s:g} at long-{long.length}" in capsys.readouterr().err


def test_an_exported_factors_file_seeds_a_search_of_the_attention_factor(tmp_path):
    """With space.mscale = "search" a seed's own mscale is replaced by the stage's starting one; a
    file's attention factor off the mscale grid (an export's 1.118...) used to be refused."""
    import json

    from longrope.objectives.synthetic import GEOMETRY

    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps({"lambdas": [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0], "mscale": 1.1180339887}))
    cfg, _ = small_cfg(space='mscale = "search"')
    cfg.search.methods = [str(seed)]
    (stage,) = make_stages(cfg, GEOMETRY)
    (f,) = initial_factors(cfg, stage, GEOMETRY, None)
    assert f.lambdas == (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0) and f.mscale == stage.space.mscale


def test_an_earlier_runs_best_off_the_grid_seeds_a_search_exactly(tmp_path):
    """A stage's best is often one of generation 0's exact seeds (YaRN's λ = 4/3 is on no 0.01
    grid): its file seeds the next run's search as it is, like the seed it was, where it was
    refused as off the grid. Out of bounds or decreasing is still refused (test_bad_inputs)."""
    from longrope.objectives.methods import method_factors
    from longrope.objectives.synthetic import GEOMETRY

    cfg, _ = small_cfg(iterations=1)
    (stage,) = make_stages(cfg, GEOMETRY)
    yarn = method_factors("yarn", GEOMETRY, stage.length).replace(mscale=stage.space.mscale)
    assert stage.space.violations(yarn) and not stage.space.violations(yarn, grid=False)  # off the grid
    (tmp_path / "best.json").write_text(yarn.to_json())
    cfg.search.methods = [str(tmp_path / "best.json"), "pi"]
    seeded = initial_factors(cfg, stage, GEOMETRY, None)
    assert seeded[0].lambdas == yarn.lambdas
    run = Run.create(tmp_path / "run", config.dumps(cfg))
    Driver(cfg, run, progress=False).run_all()
    first = min(run.studies()[0].get_trials(), key=lambda t: t.number)  # scored as it is
    assert from_params(first.params, stage.space).lambdas == yarn.lambdas


def test_ray_only_worker_keys_with_the_in_process_backend_are_said(capsys):
    """count, num_gpus and address do nothing in-process; the config's keys (unlike the command
    line's --workers and --address) do not switch to Ray, which a search with count = 4 would not
    guess from its speed."""
    from longrope.search.backends import make_backend

    cfg, _ = small_cfg()
    cfg.workers.count, cfg.workers.num_gpus = 4, 0.25
    assert isinstance(make_backend(ObjectiveSpec.of("synthetic"), cfg.workers), InProcessBackend)
    assert 'note: [workers] count = 4, num_gpus = 0.25 take effect with backend = "ray"' in capsys.readouterr().err
    cfg, _ = small_cfg()  # 1.0 GPUs is not the default 0 (it was taken for count's 1), and num_cpus counts
    cfg.workers.num_gpus = 1.0
    make_backend(ObjectiveSpec.of("synthetic"), cfg.workers)
    assert 'note: [workers] num_gpus = 1.0 takes effect' in capsys.readouterr().err
    cfg.workers.num_gpus, cfg.workers.num_cpus = 0.0, 4.0
    make_backend(ObjectiveSpec.of("synthetic"), cfg.workers)
    assert 'note: [workers] num_cpus = 4.0 takes effect' in capsys.readouterr().err
    make_backend(ObjectiveSpec.of("synthetic"), small_cfg()[0].workers)
    assert capsys.readouterr().err == ""


def _scored(run: Run) -> list:
    """The stage's scored candidates in the order they were asked for (re-queued originals left out)."""
    from longrope.runs.vocab import REQUEUED

    (study,) = run.studies()
    return [(tuple(sorted(t.params.items())), t.value) for t in study.get_trials()
            if not t.system_attrs.get(REQUEUED) and t.value is not None]


@pytest.mark.parametrize("sampler, cuts", [("random", (20, 0)), ("tpe", (6, 3)), ("tpe", (15, 0)),
                                           ("cmaes", (10, 0)), ("cmaes", (5, 6))])
def test_an_optuna_sampler_killed_and_resumed_in_process_scores_what_an_uninterrupted_one_does(
        tmp_path, sampler, cuts):
    """Killed between evaluations (a cut of 0: the re-queued copy itself, as the resume asks it),
    then resumed: the same candidates in the same order as uninterrupted. Optuna's samplers keep
    their random stream in the process (made afresh on resume, random search scored its first
    candidates again, TPE its start-up ones); CMA-ES seeds each ask with trial.number, which the
    killed trial and its copy shift, and counts only the candidates it asked for toward a
    generation, not a queued copy: each of these made the resumed run another search."""
    cfg, _ = small_cfg(sampler=sampler, iterations=2)  # 24 evaluations: 4 seeds, then draws
    reference = Run.create(tmp_path / "reference", config.dumps(cfg))
    Driver(cfg, reference, progress=False).run_all()
    run = Run.create(tmp_path / "run", config.dumps(cfg))
    for cut in cuts:
        backend = InProcessBackend(ObjectiveSpec.of("synthetic"))
        submit, submitted = backend.submit, []

        def interrupted(job, submit=submit, submitted=submitted, cut=cut):
            submitted.append(job.key)
            if len(submitted) > cut:
                raise KeyboardInterrupt
            submit(job)

        backend.submit = interrupted
        with pytest.raises(KeyboardInterrupt):
            Driver(cfg, run, progress=False, backend=backend).run_all()
    Driver(cfg, run, progress=False, backend=InProcessBackend(ObjectiveSpec.of("synthetic"))).run_all()
    assert _scored(run) == _scored(reference) and len(_scored(run)) == 24
    assert len(set(_scored(run))) == 24  # nothing drawn twice


@pytest.mark.parametrize("sampler, cut, written", [("random", 15 * 9 + 4, False), ("random", 20 * 9 + 9, True),
                                                   ("random", 1 * 9 + 3, False), ("cmaes", 14 * 9 + 5, False),
                                                   ("cmaes", 13 * 9 + 9, True), ("tpe", 16 * 9 + 2, False)])
def test_an_optuna_search_interrupted_inside_an_ask_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch,
                                                                                       sampler, cut, written):
    """Interrupted between two parameters of a draw (or after its last, before the driver holds
    the trial): the resume fails that trial and draws it again, or re-queues it whole; either way
    the same candidates are scored as uninterrupted. A half-drawn trial queued with its
    parameters, or holding its draw, would score another candidate (or skip one). A seed (the
    second trial) cut off half-written is queued again whole: it was lost, its half-written copy
    taken for it when the seeds were queued again."""
    import optuna

    from longrope.runs.vocab import DRAW, REQUEUED

    def scored(run):
        (study,) = run.studies()
        return sorted((tuple(sorted(t.params.items())), t.value) for t in study.get_trials()
                      if not t.system_attrs.get(REQUEUED))

    cfg, _ = small_cfg(sampler=sampler, iterations=2)  # 24 evaluations: 4 seeds, then 20 draws (9 params)
    reference = Run.create(tmp_path / "reference", config.dumps(cfg))
    Driver(cfg, reference, progress=False).run_all()
    run = Run.create(tmp_path / "run", config.dumps(cfg))
    storage = type(run.storage())
    set_param, calls = storage.set_trial_param, []

    def interrupted(self, *args, **kw):
        calls.append(1)
        if len(calls) == cut and written:
            set_param(self, *args, **kw)
        if len(calls) == cut:
            raise KeyboardInterrupt
        return set_param(self, *args, **kw)

    monkeypatch.setattr(storage, "set_trial_param", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Driver(cfg, run, progress=False).run_all()
    (study,) = run.studies()  # the trial only the study knew is handed back at once, as by Ctrl-C
    assert not [t for t in study.get_trials() if t.state == optuna.trial.TrialState.RUNNING]
    monkeypatch.setattr(storage, "set_trial_param", set_param)
    Driver(cfg, run, progress=False).run_all()
    assert scored(run) == scored(reference) and len(scored(run)) == 24
    (study,) = run.studies()
    (cut_off,) = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.FAIL]
    assert len(cut_off.params) == (cut - 1) % 9 + written  # the parameters written before the cut
    assert (DRAW in cut_off.system_attrs) == (cut > 4 * 9)  # a seed's trial takes no draw


def test_a_comparison_sampler_killed_while_it_queues_its_seeds_queues_the_rest_on_resume(tmp_path, monkeypatch):
    """cmaes/tpe/random queue the stage's seeds (search.methods) as it starts; a kill after the
    first left the others out for good (the resume only queued seeds into an empty study)."""
    import optuna

    from longrope.runs.vocab import REQUEUED

    cfg, _ = small_cfg(sampler="random", iterations=1)
    run = Run.create(tmp_path / "run", config.dumps(cfg))
    enqueue, calls = optuna.Study.enqueue_trial, []

    def killed_at_the_second(self, *args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return enqueue(self, *args, **kw)

    monkeypatch.setattr(optuna.Study, "enqueue_trial", killed_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        Driver(cfg, run, progress=False).run_all()
    monkeypatch.setattr(optuna.Study, "enqueue_trial", enqueue)
    Driver(cfg, run, progress=False).run_all()
    (study,) = run.studies()
    trials = [t for t in study.get_trials() if not t.system_attrs.get(REQUEUED)]
    seeds = [t.params for t in trials if "fixed_params" in t.system_attrs]
    from longrope.objectives.synthetic import GEOMETRY

    (stage,) = make_stages(cfg, GEOMETRY)
    seeded = initial_factors(cfg, stage, GEOMETRY, None)
    expected = [make_proposer(cfg, stage, seeded).param.params(f) for f in seeded]
    assert len(trials) == cfg.budget() and seeds == expected and len(expected) == len(cfg.search.methods) > 1


def two_stages(iterations: int):
    """small_cfg with stages long-256 and long-512."""
    cfg, _ = small_cfg(iterations=iterations)
    cfg.space.targets = [256, 512]
    return cfg


def test_a_long_stage_is_seeded_first_with_the_previous_long_stages_best():
    """Progressive extension (LongRoPE section 3.3): the 512 search starts from the 256 search's
    best; dropped, every later stage silently started from the closed-form methods alone."""
    from longrope.objectives.methods import method_factors
    from longrope.objectives.synthetic import GEOMETRY

    cfg = two_stages(1)
    first, second = make_stages(cfg, GEOMETRY)
    previous = method_factors("yarn", GEOMETRY, first.length)  # 256's YaRN: no seed of 512
    seeds = initial_factors(cfg, second, GEOMETRY, previous)
    assert seeds[0] == previous.replace(mscale=second.space.mscale)
    assert len(seeds) == len(initial_factors(cfg, second, GEOMETRY, None)) + 1
    assert seeds[0] not in seeds[1:]


def test_a_raised_budget_keeps_the_breed_of_a_stage_already_under_way(tmp_path, capsys):
    """Stage long-512 was interrupted in its generation 0, bred from long-256's best; a resume
    with more iterations changes that best. Generation 0 was recomputed from the new one and
    mixed two breeds (a comparison sampler would queue one more seed); now it keeps the one it
    started with. (On this objective the comparison samplers never beat their seeds.)"""
    ref = Run.create(tmp_path / "ref", config.dumps(two_stages(1)))
    Driver(two_stages(1), ref, progress=False).run_all()
    run = Run.create(tmp_path / "run", config.dumps(two_stages(1)))
    backend = InProcessBackend(ObjectiveSpec.of("synthetic"))
    submit, submitted = backend.submit, []

    def interrupted(job):  # 18 evaluations of long-256, then 5 of long-512's generation 0
        submitted.append(job.key)
        if len(submitted) > 18 + 5:
            raise KeyboardInterrupt
        submit(job)

    backend.submit = interrupted
    with pytest.raises(KeyboardInterrupt):
        Driver(two_stages(1), run, progress=False, backend=backend).run_all()
    Driver(two_stages(3), run, progress=False).run_all()
    assert run.best("long", 256).lambdas != ref.best("long", 256).lambdas  # the raised budget moved it
    first = trajectory(ref)["long-512"][:12]  # generation 0 (the seeds and their mutants, in order)
    assert trajectory(run)["long-512"][:12] == first
    assert len(trajectory(run)["long-512"]) == two_stages(3).budget()
    assert "long-512: bred from the previous stage's best as it was when this stage started" in \
        capsys.readouterr().err


def test_a_resumes_start_line_counts_evaluations_not_the_copies_it_re_queued(tmp_path):
    """The re-queued copies an interruption failed are not evaluations: events.log's start line
    (and the progress bar's start) counted them, so a resume began past where the run was."""
    import optuna

    from longrope.runs import vocab

    cfg, _ = small_cfg()
    run = Run.create(tmp_path / "run", config.dumps(cfg))
    backend = InProcessBackend(ObjectiveSpec.of("synthetic"))
    submit, submitted = backend.submit, []

    def interrupted(job):
        submitted.append(job.key)
        if len(submitted) > 20:
            raise KeyboardInterrupt
        submit(job)

    backend.submit = interrupted
    with pytest.raises(KeyboardInterrupt):
        Driver(cfg, run, progress=False, backend=backend).run_all()
    trials = optuna.load_study(study_name="long-256", storage=run.storage()).get_trials(deepcopy=False)
    copies = sum(1 for t in trials if t.system_attrs.get(vocab.REQUEUED))
    done = sum(1 for t in trials if t.state.is_finished() and not t.system_attrs.get(vocab.REQUEUED))
    assert copies and done == 20
    from longrope.runs.report import stage_views

    (view,) = stage_views(run)  # the report counts them alike: no failure, 20 evaluations
    assert (view.failed, len(view.values) + view.pruned) == (0, 20)
    Driver(cfg, run, progress=False).run_all()
    events = (run.path / "events.log").read_text()
    assert f"long-256: start, {done}/{cfg.budget()} evaluations done" in events
    gens = re.findall(r"long-256 gen \d+: (\d+) evaluated, \d+ pruned, (\d+) failed", events)
    assert len(gens) >= 3 and [(int(n), int(f)) for n, f in gens] == [(12, 0)] + [(6, 0)] * (len(gens) - 1)


def test_a_long_stage_with_no_result_leaves_the_next_one_bred_from_the_last_that_had_one(tmp_path):
    """Every candidate of long-512 failed (a comparison sampler goes on where the evolution has
    no parents): long-1024 is bred from long-256's best, not from nothing."""
    from longrope.objectives.perplexity import FAILED, Evaluation
    from longrope.runs import vocab
    from longrope.runs.best import BestRecord

    class FailsAt512(InProcessBackend):
        def submit(self, job):
            if job.length != 512:
                return super().submit(job)
            self._done.append((job.key, Evaluation(job.factors, job.length, FAILED, float("inf"),
                                                   reason="NLL is nan on document 0")))

    cfg, _ = small_cfg(sampler="random", iterations=0)
    cfg.space.targets = [256, 512, 1024]
    run = Run.create(tmp_path / "run", config.dumps(cfg))
    results = Driver(cfg, run, progress=False, backend=FailsAt512(ObjectiveSpec.of("synthetic"))).run_all()
    assert results["long-512"] is None and results["long-1024"] is not None
    bred = {s.study_name: s.user_attrs[vocab.BRED_FROM] for s in run.studies()}
    first = BestRecord.load(run.best_path("long", 256))
    assert bred["long-1024"]["lambdas"] == list(first.lambdas) and bred["long-512"] == bred["long-1024"]


def test_status_shows_a_resumes_new_budget_for_a_stage_it_has_not_reached_yet(tmp_path, capsys):
    """A resume with more iterations, interrupted in the first stage: `status` read the later
    stage's budget from when it ran, and called it done."""
    from longrope.search.cli import main

    run = Run.create(tmp_path / "run", config.dumps(two_stages(1)))
    Driver(two_stages(1), run, progress=False).run_all()
    backend = InProcessBackend(ObjectiveSpec.of("synthetic"))
    submit = backend.submit

    def interrupted(job):
        submit(job)
        raise KeyboardInterrupt

    backend.submit = interrupted
    with pytest.raises(KeyboardInterrupt):
        Driver(two_stages(3), run, progress=False, backend=backend).run_all()
    capsys.readouterr()
    assert main(["status", str(run.path), "--json"]) == 0
    stages = {s["name"]: s for s in json.loads(capsys.readouterr().out)["stages"]}
    assert stages["long-512"]["budget"] == two_stages(3).budget() > stages["long-512"]["evals"]
    assert not stages["long-512"]["done"]


def test_a_space_with_no_new_candidate_left_ends_its_stage_and_resumes_to_the_same_end(tmp_path):
    """A generation that cannot be bred (every child drawn was scored before: a step of 0.5 and
    5 searched pairs) ended the search in a RuntimeError traceback. Now the stage stops there
    like an early stop, says why, and a run that reaches it through a raised budget on resume
    (a function of the generations before it) ends where an uninterrupted run does."""
    space = "critical_dim = 7\nstep = 0.5"
    cfg = small_cfg(space=space, iterations=6)[0]
    ref = Run.create(tmp_path / "ref", config.dumps(cfg))
    assert Driver(cfg, ref, progress=False).run_all()["long-256"] is not None
    assert "long-256: done (stopped at generation 2, which has no candidate not already scored: the space " \
           "is nearly exhausted" in (ref.path / "events.log").read_text()
    assert len(trajectory(ref)["long-256"]) == 12 + 6 < cfg.budget()
    short = small_cfg(space=space, iterations=1)[0]
    run_search(short, str(tmp_path / "run"), progress=False)
    run_search(cfg, str(tmp_path / "run"), resume=True, progress=False)
    run = Run.open(tmp_path / "run")
    assert trajectory(run) == trajectory(ref)
    assert "stopped at generation 2" in (run.path / "events.log").read_text()
    status = json.loads(render_status(run, as_json=True))
    assert status["stages"][0]["done"] and status["stages"][0]["early_stopped_at"] == 2
    assert render_status(run, as_json=False).splitlines()[2].endswith(", done (stopped early at generation 2)")


def test_a_search_started_beside_another_on_one_new_run_dir_is_busy(tmp_path, monkeypatch, capsys):
    """Two jobs on one new --run-dir: the one whose workers come up second finds the run made by
    the other. It exits 75 (busy: a requeue loop tries again and resumes the run), not 2 with
    "exists and is not empty; ... resume a run" (a bad config to such a loop, and wrong)."""
    from longrope.search.cli import main

    cfg, text = small_cfg()
    (tmp_path / "c.toml").write_text(text)
    real = plan.Plan.start_backend

    def the_other_makes_it(self):  # while this driver's workers load
        real(self)
        Run.create(tmp_path / "r", config.dumps(cfg))

    monkeypatch.setattr(plan.Plan, "start_backend", the_other_makes_it)
    rc = main(["search", str(tmp_path / "c.toml"), "--run-dir", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 75 and "was made a run by another driver just now, while this one started" in err, err
    assert Run.open(tmp_path / "r").studies() == []  # the other's run, untouched


def test_a_resume_with_a_new_budget_keeps_it_for_the_next(tmp_path):
    """A resume with more iterations writes them into the run's config.toml (and says so in
    events.log): a later plain resume, and status, go by the budget the run was last driven with."""
    import tomllib

    cfg, _ = small_cfg(iterations=2)
    run_search(cfg, str(tmp_path / "r"), progress=False)
    cfg.search.iterations = 3
    run_search(cfg, str(tmp_path / "r"), resume=True, progress=False)
    run = Run.open(tmp_path / "r")
    assert tomllib.loads((run.path / "config.toml").read_text())["search"]["iterations"] == 3
    assert "config: search.iterations: 2 -> 3" in (run.path / "events.log").read_text()


def test_each_scored_candidate_keeps_its_documents_tokens_time_and_tail_in_the_journal(tmp_path):
    """What a user reads back from the journal (runs/vocab.py): each trial's per-document NLL,
    tokens and seconds; a complete one its last-quarter perplexity too (the synthetic model's
    tail is exp(base), its documents base × 0.9, 0.95, ...)."""
    import math

    from optuna.trial import TrialState

    from longrope.runs.vocab import DOC_NLL, SECONDS, TAIL_PPL, TOKENS

    run, _ = run_small(tmp_path, iterations=1)
    (study,) = run.studies()
    trials = [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(trials) == 18
    for t in trials:
        nll = t.user_attrs[DOC_NLL]
        assert t.user_attrs[TOKENS] == 256 * len(nll) and t.user_attrs[SECONDS] >= 0
        if t.state == TrialState.COMPLETE:
            assert t.value == pytest.approx(math.exp(sum(nll) / len(nll)))
            assert t.user_attrs[TAIL_PPL] == pytest.approx(math.exp(nll[0] / 0.9))
        else:
            assert TAIL_PPL not in t.user_attrs


def test_events_log_names_each_generation_its_counts_best_and_next_parent_cut_off(tmp_path):
    """`events.log` is what a user tails on a cluster: per generation g its evaluations, the
    best so far and the cut-off generation g + 1 is scored against (its `parents`-th best of
    generations 0..g, the worst parent: a child that finishes above it breeds nothing)."""
    import re

    from optuna.trial import TrialState

    from longrope.runs.vocab import SLOT

    run, _ = run_small(tmp_path, iterations=2, pruner="none")
    (study,) = run.studies()
    lines = re.findall(r"long-256 gen (\d+): (\d+) evaluated, 0 pruned, 0 failed; best ([\d.]+), "
                       r"parent cut-off ([\d.]+)", (run.path / "events.log").read_text())
    assert [int(g) for g, *_ in lines] == [0, 1, 2]
    for g, n, best, cut in lines:
        done = sorted(t.value for t in study.get_trials() if t.state == TrialState.COMPLETE
                      and t.system_attrs[SLOT][0] <= int(g))
        assert int(n) == (12 if g == "0" else 6)
        assert (best, cut) == (f"{done[0]:.4f}", f"{done[6 - 1]:.4f}")  # parents = 6
