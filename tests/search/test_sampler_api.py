"""LongRoPESampler as a plain Optuna sampler, outside `longrope search` (the README's Python use):
an objective needs no suggest calls, the result is a pure function of the seed, and asking a
generation before the last one is told is refused instead of breeding from whatever finished."""

import json

import numpy as np
import optuna
import pytest

from longrope.search.sampler import LongRoPESampler
from longrope.spaces import RescaleFactors, SearchSpace, UserError

SPACE = SearchSpace.for_target(8, 4.0)
SHAPE = dict(population=8, parents=4, mutants=2, crossovers=2)


def optimize(seed: int) -> list[tuple]:
    sampler = LongRoPESampler(SPACE, seed=seed, **SHAPE)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: sum((x - 2.5) ** 2 for x in sampler.factors(t).lambdas), n_trials=20)
    return [(t.params["n_hat"], t.value) for t in study.trials]


def test_optimize_with_factors_only_is_deterministic():
    a = optimize(0)
    assert len(a) == 20 and a == optimize(0) and a != optimize(1)
    assert min(v for _, v in a[8:]) < min(v for _, v in a[:8])  # the children improve on generation 0


def test_asking_past_an_untold_generation_is_refused():
    sampler = LongRoPESampler(SPACE, seed=0, **SHAPE)
    study = optuna.create_study(sampler=sampler)
    gen0 = [study.ask() for _ in range(8)]
    for t in gen0[:-1]:
        study.tell(t, sum(sampler.factors(t).lambdas))
    early = study.ask()  # generation 1's first child, with one of generation 0 still out
    sampler.factors(gen0[-1])
    with pytest.raises(RuntimeError, match="generation 1 is bred from every candidate before it, but 1 of them is"):
        sampler.factors(early)


def test_generation_0_mutates_each_seed_in_turn(monkeypatch):
    """Generation 0 is the seeds, then mutants of them in turn (LongRoPE's initial population:
    PI, NTK, YaRN and mutations of them), not of the first seed alone."""
    from longrope.search import sampler as sampler_mod
    from longrope.spaces import RescaleFactors

    seeds = [RescaleFactors.uniform(v, SPACE.n_freqs) for v in (2.0, 3.0, 4.0)]
    bred: dict = {}
    mutate = sampler_mod.mutate

    def recorded(parent, *args, **kw):
        child = mutate(parent, *args, **kw)
        bred[child] = parent
        return child

    monkeypatch.setattr(sampler_mod, "mutate", recorded)
    sampler = LongRoPESampler(SPACE, seed=0, seeds=seeds, **{**SHAPE, "population": 9})
    gen = sampler.generation(optuna.create_study(sampler=sampler), 0)
    assert gen[:3] == [SPACE.clip(s) for s in seeds] and len(gen) == 9
    assert sorted(seeds.index(bred[c]) for c in gen[3:]) == [0, 0, 1, 1, 2, 2]


def test_a_population_larger_than_generation_0_can_fill_is_a_clear_error():
    """mutation_prob 0 breeds only copies of the seed: this used to loop for ever."""
    sampler = LongRoPESampler(SPACE, seed=0, mutation_prob=0.0, **SHAPE)
    with pytest.raises(UserError, match="generation 0: only 1 distinct candidates of search.population = 8"):
        sampler.generation(optuna.create_study(sampler=sampler), 0)


class _Killed(Exception):
    """A kill -9 of the driver, inside study.ask."""


def _two_workers(interrupt_at: tuple[int, ...], die_popping: int = 0) -> list[tuple]:
    """The (slot, value) of every owned complete trial of a search that keeps two candidates in
    flight, like `longrope search` with 2 workers, killed (in flight trials left RUNNING) when
    `interrupt_at` candidates are told, then resumed by a new process on the same storage.
    `die_popping`: also killed inside the ask that pops each of the first n re-queued copies off
    the queue, after Optuna marked it RUNNING and before the sampler's before_trial ran."""
    from types import SimpleNamespace

    from longrope.runs.vocab import SLOT
    from longrope.search.driver import requeue_running

    storage, pending, flight, told = optuna.storages.InMemoryStorage(), list(interrupt_at), [], 0
    deaths = [die_popping]

    class Sampler(LongRoPESampler):
        def before_trial(self, study, trial):
            if SLOT in trial.user_attrs and deaths[0]:
                deaths[0] -= 1
                raise _Killed
            super().before_trial(study, trial)

    def process():
        sampler = Sampler(SPACE, seed=0, **SHAPE)
        study = optuna.create_study(storage=storage, study_name="s", sampler=sampler, load_if_exists=True)
        return sampler, study

    def resume():  # the driver died; a resume re-queues what it left
        sampler, study = process()
        requeue_running(study, SimpleNamespace(requeue_params=lambda t: t.params or {}))
        return sampler, study

    sampler, study = process()
    while told < 16:
        try:
            while len(flight) < 2 and told + len(flight) < 16 and sampler.ready(study):
                t = study.ask()
                flight.append((t, sum((x - 2.5) ** 2 for x in sampler.factors(t).lambdas)))
        except _Killed:
            sampler, study = resume()
            flight = []
            continue
        if pending and told == pending[0]:
            pending.pop(0)
            sampler, study = resume()
            flight = []
            continue
        t, value = flight.pop(0)
        study.tell(t, value)
        told += 1
    return sorted((tuple(t.system_attrs[SLOT]), t.value) for t in sampler.owned(study)
                  if t.state == optuna.trial.TrialState.COMPLETE)


def test_a_second_interruption_while_a_requeued_candidate_runs_loses_no_slot():
    """Killed with (1,0) and (1,1) in flight; resumed, the re-queued (1,0) is told and (1,2) asked;
    killed again with the re-queued (1,1) in flight: it is re-queued again, not failed for good
    (slot (1,1) never scored and (1,2) scored twice)."""
    ref = _two_workers(())
    assert len(ref) == 16 and len({s for s, _ in ref}) == 16
    assert _two_workers((9, 10)) == ref
    assert _two_workers((3, 8, 9, 13)) == ref


def test_a_kill_while_a_requeued_copy_is_popped_loses_no_slot():
    """Optuna marks a copy popped off the queue RUNNING one write before the sampler copies its
    slot to the system attrs: killed in between, the copy was re-queued without its slot, took
    the next fresh one, and the lost slot was never scored (another scored twice)."""
    ref = _two_workers(())
    assert _two_workers((9,), die_popping=1) == ref
    assert _two_workers((3, 8, 13), die_popping=3) == ref


def test_a_lambda_max_an_ulp_below_its_top_grid_point_is_searched():
    """λmax = 1.2 · 3 = 3.5999999999999996 puts the top grid point, 3.6, an ulp above it; a candidate
    there must still be a valid Optuna parameter (it used to fall to sample_independent and raise)."""
    space = SearchSpace.for_target(8, 3.0, ratio=1.2)
    assert space.lambda_max < 3.6 == float(space.snap([9.0] * 8)[-1])
    from longrope.spaces import RescaleFactors

    sampler = LongRoPESampler(space, seed=0, seeds=[RescaleFactors.uniform(4.0, 8)], **SHAPE)  # clipped
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: -sum(sampler.factors(t).lambdas), n_trials=16)
    assert max(max(sampler.factors(t).lambdas) for t in study.trials) == 3.6


@pytest.mark.parametrize("d, base, L0, s", [(64, 1e4, 256, 4), (128, 5e5, 8192, 16), (96, 1e4, 4096, 32)])
def test_the_comparison_samplers_enqueue_each_seed_exactly(d, base, L0, s):
    """cmaes/tpe/random search monotone steps of λ, each later step up to 4·span/n; YaRN's and
    NTK's ramps are steeper than that in places, and the enqueued "yarn" used to be YaRN with its
    ramp cut (off by up to 18 on a Phi-3 geometry)."""
    from longrope.search.alternatives import StepParametrisation
    from longrope.spaces import METHODS, RopeGeometry

    g = RopeGeometry(rotary_dim=d, base=base, original_length=L0)
    space = SearchSpace.for_target(d // 2, float(s))
    seeds = [space.clip(METHODS[m](g, L0 * s)) for m in ("pi", "ntk", "yarn", "dynamic_ntk")]
    param = StepParametrisation(space, seeds)
    dists = param.distributions()
    for f in seeds:
        p = param.params(f)
        assert all(dists[k]._contains(v) for k, v in p.items())
        np.testing.assert_allclose(param.factors(p).lambdas, f.lambdas, rtol=0, atol=1e-9)
    bare = StepParametrisation(space)  # the default ranges alone: YaRN's ramp does not fit
    assert np.abs(np.subtract(bare.factors(bare.params(seeds[2])).lambdas, seeds[2].lambdas)).max() > 0.1
    n, span = d // 2, space.lambda_max - space.gene_min  # the documented ranges: the whole span,
    highs = [dist.high for k, dist in bare.distributions().items() if k.startswith("step_")]
    np.testing.assert_allclose(highs, [span] + [4 * span / n] * (n - 1))  # then 4·span/n a step


def test_tpe_is_multivariate():
    """Independent TPE ignores how the λ steps work together (a monotone ramp is one shape).
    Optuna's warning that `multivariate` is experimental is not passed on to every tpe search."""
    import warnings

    from longrope.search.alternatives import make_sampler

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert make_sampler("tpe", 0)._multivariate is True
    assert not seen


def _score(sampler, t) -> float:
    return sum((x - 2.5) ** 2 for x in sampler.factors(t).lambdas) + 0.01 * sampler.factors(t).n_hat


def _finish(sampler, study, n: int) -> list[tuple]:
    """Ask and tell while the next slot is within a budget of `n` (GAProposer.ready's rule) and
    the sampler does not wait; (slot, value) by slot."""
    from longrope.runs.vocab import SLOT

    while sampler.slots_before((slot := sampler.next_slot(study))[0]) + slot[1] < n and sampler.ready(study):
        t = study.ask()
        study.tell(t, _score(sampler, t))
    return sorted((tuple(t.system_attrs[SLOT]), t.value) for t in sampler.owned(study))


def test_a_trial_killed_inside_its_ask_before_its_slot_is_not_requeued():
    """Two candidates in flight; the driver dies inside the ask of a fresh trial (Optuna made it
    RUNNING, the sampler had not given it a slot). Its slotless copy was queued beside the other
    candidate's copy; a resume with one worker popped that copy and died scoring it; the next
    resume's slotless copy then took that slot: one slot scored twice, the next never."""
    from types import SimpleNamespace

    from longrope.runs.vocab import SLOT
    from longrope.search.proposers import GAProposer
    from longrope.search.stopping import requeue_running

    n, die = 20, [False]

    class Sampler(LongRoPESampler):
        def before_trial(self, study, trial):
            if die[0] and SLOT not in trial.user_attrs:
                die[0] = False
                raise _Killed
            super().before_trial(study, trial)

    def process(storage, resumed=True):
        sampler = Sampler(SPACE, seed=0, **SHAPE)
        study = optuna.create_study(storage=storage, study_name="s", sampler=sampler, load_if_exists=True)
        if resumed:  # the driver's own re-queue, with the proposer's rule
            requeue_running(study, SimpleNamespace(requeue_params=lambda t: GAProposer.requeue_params(None, t)))
        return sampler, study

    reference = _finish(*process(optuna.storages.InMemoryStorage(), resumed=False), n)
    storage = optuna.storages.InMemoryStorage()
    sampler, study = process(storage, resumed=False)
    for _ in range(10):  # generation 0, then (1, 0) and (1, 1)
        t = study.ask()
        study.tell(t, _score(sampler, t))
    sampler.factors(study.ask())  # (1, 2) in flight on one worker
    die[0] = True
    with pytest.raises(_Killed):
        study.ask()  # the other worker's ask, killed before its slot was written
    sampler, study = process(storage)  # a resume with one worker: pops (1, 2)'s copy, killed scoring it
    sampler.factors(study.ask())
    assert _finish(*process(storage), n) == reference


def test_a_re_queued_slot_whose_copy_the_journal_lost_is_queued_again(tmp_path):
    """Two candidates in flight when the driver dies; the resume queues a copy of each, one
    journal line apiece. `--repair` may drop the first torn (no later record names it): (1, 2)
    then never ran and the next fresh ask took (1, 3) again, a search unlike the uninterrupted
    one without a word. The lost slot is queued again, ahead of (1, 3)'s copy (a budget lowered
    to 11 on resume ended the stage at (1, 3), at 10, with (1, 2) queued behind it); a journal an
    older resume filled with that second (1, 3) gets nothing more (it would overfill generation
    1: the stage could never go on)."""
    from types import SimpleNamespace

    from longrope.runs.vocab import SLOT
    from longrope.search.proposers import GAProposer
    from longrope.search.stopping import requeue_running

    n, path = 20, tmp_path / "journal.log"
    proposer = SimpleNamespace(requeue_params=lambda t: GAProposer.requeue_params(None, t))

    def process(storage):
        sampler = LongRoPESampler(SPACE, seed=0, **SHAPE)
        return sampler, optuna.create_study(storage=storage, study_name="s", sampler=sampler,
                                            load_if_exists=True)

    def journal():
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))

    reference = _finish(*process(optuna.storages.InMemoryStorage()), n)
    sampler, study = process(journal())
    for _ in range(10):
        t = study.ask()
        study.tell(t, _score(sampler, t))
    for _ in range(2):  # (1, 2) and (1, 3) in flight when the driver dies
        sampler.factors(study.ask())
    requeue_running(process(journal())[1], proposer)
    lines = path.read_bytes().splitlines(keepends=True)
    [first, _] = [i for i, ln in enumerate(lines) if (r := json.loads(ln))["op_code"] == 4
                  and SLOT in r.get("user_attrs", {})]
    path.write_bytes(b"".join(lines[:first] + lines[first + 1:]))  # as --repair drops it
    damaged = path.read_bytes()
    slots = [slot for slot, _ in _finish(*process(journal()), n)]
    assert (1, 2) not in slots and slots.count((1, 3)) == 2
    path.write_bytes(damaged)
    sampler, study = process(journal())
    assert GAProposer.requeue_lost(None, study) == 1 and GAProposer.requeue_lost(None, study) == 0
    assert _finish(sampler, study, n) == reference
    path.write_bytes(damaged)
    sampler, study = process(journal())
    GAProposer.requeue_lost(None, study)
    assert _finish(sampler, study, 11) == reference[:11]
    path.write_bytes(damaged)  # killed after marking (1, 3)'s waiting copy, before failing it
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("longrope.search.proposers.fail_trial", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            GAProposer.requeue_lost(None, process(journal())[1])
    sampler, study = process(journal())
    assert GAProposer.requeue_lost(None, study) == 2 and _finish(sampler, study, 11) == reference[:11]
    path.write_bytes(damaged)  # resumed by the old code (no requeue_lost) for 4 evaluations, then by this
    _finish(*process(journal()), 14)
    sampler, study = process(journal())
    assert GAProposer.requeue_lost(None, study) == 0 and len(_finish(sampler, study, n)) == n


def _run_generation_0(sampler, values):
    study = optuna.create_study(sampler=sampler)

    def objective(trial):
        sampler.factors(trial)
        return values[trial.number]

    study.optimize(objective, n_trials=len(values))
    return study


def test_no_pruning_cut_off_while_fewer_children_completed_than_there_are_parents():
    """A failed child of generation 0 leaves 3 complete of 4 parents: each is a parent, and the
    next generation was pruned against the worst of those few."""
    from longrope.search.sampler import LongRoPESampler

    s = LongRoPESampler(SearchSpace(n_freqs=4, lambda_max=4.0), population=4, parents=4, mutants=2, crossovers=2)
    study = _run_generation_0(s, [float("nan"), 2.0, 3.0, 4.0])
    assert s.cutoff_parent(study, 1) is None


def test_each_genes_distribution_starts_at_its_own_floor():
    from longrope.search.sampler import LongRoPESampler

    space = SearchSpace.for_target(6, 2.0, ratio=2.5, critical_dim=2, search_below=True)
    d = LongRoPESampler(space).distributions()
    assert d["lambda_000"].low == 1.0 and d["lambda_002"].low == 2.0


def _ga_proposer(budget, patience=0, min_improvement=0.001):
    from types import SimpleNamespace

    from longrope.search.proposers import GAProposer

    se = SimpleNamespace(seed=0, population=2, parents=2, mutants=1, crossovers=1, mutation_prob=0.3,
                         crossover_prob=0.3, sigma=0.1, patience=patience, min_improvement=min_improvement,
                         pruner="none", pruner_p=0.1, pruner_startup=1)
    stage = SimpleNamespace(space=SearchSpace(n_freqs=4, lambda_max=4.0), budget=budget, length=256)
    return GAProposer(SimpleNamespace(search=se), stage, [])


def _drive(proposer, value):
    study, done = optuna.create_study(sampler=proposer.sampler), []
    while proposer.ready(study):
        t = study.ask(proposer.distributions())
        proposer.factors(study._storage.get_trial(t._trial_id))
        study.tell(t, value)
        done.append(proposer.generation_done(study, t))
    return study, done


def test_min_improvement_0_stops_a_flat_best_after_patience_generations():
    """0 read as 'any gain resets patience': a best that did not move at all ran to the budget."""
    p = _ga_proposer(budget=12, patience=2, min_improvement=0.0)
    study, _ = _drive(p, 1.0)
    assert p.stopped(study) and len(study.trials) == 6  # generations 0-2, stopped at 3
    p = _ga_proposer(budget=12, patience=0, min_improvement=0.0)
    assert len(_drive(p, 1.0)[0].trials) == 12  # patience 0: never


def test_a_generation_the_budget_cuts_short_is_reported_done():
    _, done = _drive(_ga_proposer(budget=3), 1.0)  # generation 1 gets 1 of its 2 slots
    assert done == [None, 0, 1]


def _optuna_proposer(seeds, budget, length=256):
    from types import SimpleNamespace

    from longrope.search.proposers import OptunaProposer

    cfg = SimpleNamespace(search=SimpleNamespace(sampler="random", seed=0))
    stage = SimpleNamespace(space=SearchSpace(n_freqs=4, lambda_max=4.0), budget=budget, length=length)
    return OptunaProposer(cfg, stage, seeds)


def test_a_comparison_sampler_queues_only_the_seeds_its_budget_holds_and_draws_per_stage():
    p = _optuna_proposer([RescaleFactors.uniform(x, 4) for x in (1.0, 2.0, 3.0)], budget=2)
    study = optuna.create_study(sampler=p.sampler)
    p.start(study)
    assert len(study.trials) == 2  # a third stayed WAITING in the journal
    p = _optuna_proposer([RescaleFactors.uniform(x, 4) for x in (2.0, 2.0, 3.0)], budget=3)
    study = optuna.create_study(sampler=p.sampler)
    p.start(study)
    assert len(study.trials) == 2  # seeds alike are scored once, as on resume (and as the evolution does)

    def first(length):
        p = _optuna_proposer([], budget=1, length=length)
        study = optuna.create_study(sampler=p.sampler)
        p.start(study)
        return study.ask(p.distributions()).params

    assert first(256) != first(512)  # every stage drew the same stream
