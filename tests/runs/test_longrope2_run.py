"""A run with LongRoPE2's critical dimension and searched mscale: what the journal stores, the best
files, export, status."""

import json

import numpy as np
import optuna
import pytest
from search_helpers import LONGROPE2, run_small, small_cfg

from longrope.runs import BestRecord
from longrope.runs.export import export
from longrope.runs.status import render_status, stage_summaries
from longrope.search.proposers import best_trial
from longrope.spaces import RescaleFactors, below_critical, mscale_su


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run, _ = run_small(tmp_path_factory.mktemp("lr2"), short="[32]", space=LONGROPE2)
    return run


def study(run, name):
    return optuna.load_study(study_name=name, storage=run.storage())


def test_the_journal_holds_the_genes_and_the_searched_mscale(run):
    trials = study(run, "long-256").get_trials(deepcopy=False)
    names = {tuple(t.params) for t in trials}
    assert names == {(*(f"lambda_{i:03d}" for i in range(2, 8)), "n_hat", "mscale")}  # pairs 0, 1 derived
    assert min(t.params["lambda_002"] for t in trials) >= 4.0  # s = 256 / 64
    assert max(t.params["lambda_007"] for t in trials) > 1.25 * 4.0  # the 2.5 s range is used
    start = round(mscale_su(4, 64), 4)
    assert trials[0].params["mscale"] == start and len({t.params["mscale"] for t in trials}) > 3
    short = study(run, "short-32").get_trials(deepcopy=False)
    assert all("mscale" not in t.params for t in short)  # short stages keep mscale 1


def test_best_file_and_export_carry_the_searched_mscale(run):
    best = best_trial(study(run, "long-256"))
    record = BestRecord.load(run.best_path("long", 256))
    assert record.mscale == best.params["mscale"] and record.trial == best.number
    lam = np.array(record.lambdas)
    assert list(lam[2:]) == [best.params[f"lambda_{i:03d}"] for i in range(2, 8)]
    assert np.array_equal(lam[:2], below_critical(lam[2], 2))
    patch = json.loads(export(run)[0].read_text())
    assert patch["rope_scaling"]["attention_factor"] == record.mscale
    assert patch["rope_scaling"]["long_factor"] == list(record.lambdas)
    assert BestRecord.load(run.best_path("short", 32)).mscale == 1.0


def test_status_reports_critical_dim_mscale_and_tokens(run):
    long, short = stage_summaries(run)
    assert long["critical_dim"] == short["critical_dim"] == 2
    assert long["mscale"] == "search" and short["mscale"] == 1.0
    trials = study(run, "long-256").get_trials(deepcopy=False)
    assert long["tokens"] == sum(t.user_attrs["tokens"] for t in trials) > 0
    assert {"pruned", "tokens_saved"} <= set(long)
    as_json = json.loads(render_status(run, True))["stages"][0]
    assert as_json["critical_dim"] == 2 and as_json["below_critical"] == "ntk" and as_json["tokens"] == long["tokens"]
    assert "critical dim 2, mscale searched" in render_status(run, False)


@pytest.mark.parametrize("sampler", ["random", "cmaes"])
def test_other_samplers_search_the_same_genes(tmp_path, sampler):
    from longrope.objectives.synthetic import GEOMETRY
    from longrope.search.alternatives import StepParametrisation
    from longrope.search.stages import make_stages

    other, _ = run_small(tmp_path, sampler=sampler, iterations=1, space=LONGROPE2)
    space = make_stages(small_cfg(space=LONGROPE2)[0], GEOMETRY)[0].space
    param = StepParametrisation(space)
    seed = space.repair(RescaleFactors((1.0, 1.0, 4.5, 5.0, 6.0, 7.0, 8.0, 9.0), mscale=1.2))
    back = param.factors(param.params(seed))  # an enqueued seed is scored as it is
    np.testing.assert_allclose(back.lambdas, seed.lambdas, rtol=1e-12)
    assert back.mscale == seed.mscale
    trials = study(other, "long-256").get_trials(deepcopy=False)
    assert {tuple(t.params) for t in trials} == {(*(f"step_{i:03d}" for i in range(2, 8)), "n_hat", "mscale")}
    for t in trials:
        f = param.factors(t.params)
        assert space.contains(f, grid=False), space.violations(f, grid=False)
        assert f.mscale == space.snap_mscale(f.mscale)
    assert BestRecord.load(other.best_path("long", 256)).mscale == param.factors(
        best_trial(study(other, "long-256")).params).mscale


@pytest.mark.parametrize("sampler", ["longrope", "random"])
def test_searching_below_the_critical_dim_stores_every_pair_with_the_floor(tmp_path, sampler):
    """below_critical = "search": every pair is a trial parameter (none derived), the pairs from c
    on stay >= s, the ones below vary on their own, and the best file is the best trial's genes."""
    other, _ = run_small(tmp_path, sampler=sampler, iterations=2,
                         space='critical_dim = "auto"\nbelow_critical = "search"')
    trials = study(other, "long-256").get_trials(deepcopy=False)
    if sampler == "longrope":
        assert {tuple(t.params) for t in trials} == {(*(f"lambda_{i:03d}" for i in range(8)), "n_hat")}
        lams = [np.array([t.params[f"lambda_{i:03d}"] for i in range(8)]) for t in trials]
    else:
        from longrope.objectives.synthetic import GEOMETRY
        from longrope.search.alternatives import StepParametrisation
        from longrope.search.stages import make_stages

        space = make_stages(small_cfg(space='critical_dim = "auto"\nbelow_critical = "search"')[0],
                            GEOMETRY)[0].space
        lams = [np.array(StepParametrisation(space).factors(t.params).lambdas) for t in trials]
    assert all(x[2:].min() >= 4.0 and np.all(np.diff(x) >= 0) for x in lams)  # s = 4 from pair 2 on
    assert len({round(x[1] / x[2], 6) for x in lams}) > 3  # pair 1 is not tied to pair 2 by the rule
    assert any(x[1] < 4.0 ** 0.5 - 0.01 for x in lams) and any(x[1] > 4.0 ** 0.5 + 0.01 for x in lams)
    assert "critical dim 2 (pairs below searched)" in render_status(other, False)
    assert json.loads(render_status(other, True))["stages"][0]["below_critical"] == "search"
    record = BestRecord.load(other.best_path("long", 256))
    if sampler == "longrope":
        best = best_trial(study(other, "long-256"))
        assert list(record.lambdas) == [best.params[f"lambda_{i:03d}"] for i in range(8)]
