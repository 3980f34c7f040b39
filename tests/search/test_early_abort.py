"""The exact early abort changes what a search costs, never what it finds: on a configuration
that really prunes, the same parents every generation and the same best, with or without it,
and after kill -9 and resume. The Wilcoxon pruner too, on the synthetic objective (whose
per-document NLLs all move together, so the test is never wrong about a worse candidate)."""

import json
import tomllib

import optuna
import pytest
from search_helpers import small_cfg, trajectory

from longrope.runs import Run
from longrope.runs.status import render_status, stage_summaries
from longrope.search import config
from longrope.search.driver import Driver
from longrope.search.proposers import study_system_attrs

# wide mutations make children far from their parents, so some are provably worse than the cut-off
PRUNING = "[search]\nsigma = 1.0\nmutation_prob = 0.6\n"


def pruning_text(pruner: str) -> str:
    text = small_cfg(iterations=6)[1].replace("[search]\n", PRUNING)
    return text.replace("[search]\n", f'[search]\npruner = "{pruner}"\n')


def parents_by_generation(run: Run) -> dict[int, list[tuple]]:
    """Each generation's chosen parents, as slots (trial numbers differ after a resume). A trial a
    kill -9 caught between `ask` and its slot has none (it was failed and re-queued on resume)."""
    study = optuna.load_study(study_name="long-256", storage=run.storage())
    slot = {t.number: tuple(t.system_attrs["longrope_slot"]) for t in study.get_trials(deepcopy=False)
            if "longrope_slot" in t.system_attrs}
    return {int(k.rsplit("_", 1)[1]): [slot[n] for n in v] for k, v in study_system_attrs(study).items()
            if k.startswith("longrope_parents_")}


def search(tmp_path, name, text):
    cfg = config.from_dict(tomllib.loads(text))
    run = Run.create(tmp_path / name, config.dumps(cfg))
    Driver(cfg, run, progress=False).run_all()
    return run


def test_early_abort_prunes_but_changes_no_parent_and_no_best(tmp_path):
    on, off = search(tmp_path, "on", pruning_text("exact")), search(tmp_path, "off", pruning_text("none"))
    rows_on, rows_off = trajectory(on)["long-256"], trajectory(off)["long-256"]
    assert sum(r[2] == "PRUNED" for r in rows_on) >= 3 and not any(r[2] == "PRUNED" for r in rows_off)
    assert [r[:2] for r in rows_on] == [r[:2] for r in rows_off]  # the same candidates, slot by slot
    assert parents_by_generation(on) == parents_by_generation(off) and len(parents_by_generation(on)) == 6
    best = [json.loads(r.best_path("long", 256).read_text()) for r in (on, off)]
    assert best[0]["lambdas"] == best[1]["lambdas"] and best[0]["search_ppl"] == best[1]["search_ppl"]
    assert best[0]["evals"] == best[1]["evals"]  # a pruned candidate is an evaluation done too
    pruned = [t for t in optuna.load_study(study_name="long-256", storage=on.storage()).get_trials(deepcopy=False)
              if t.state == optuna.trial.TrialState.PRUNED]  # what Optuna's tools show of it
    assert pruned and all(list(t.intermediate_values) == [len(t.user_attrs["doc_nll"])] and
                          t.intermediate_values[len(t.user_attrs["doc_nll"])] > 1 for t in pruned)
    tokens = [sum(t.user_attrs["tokens"] for t in optuna.load_study(study_name="long-256", storage=r.storage())
                  .get_trials(deepcopy=False) if "tokens" in t.user_attrs) for r in (on, off)]
    assert tokens[0] < tokens[1]
    # status: tokens run, and the saving computed from the pruned trials' unscored documents alone
    # equals what scoring them fully cost in the run without early abort (the same candidates)
    summary = [stage_summaries(r)[0] for r in (on, off)]
    assert [s["tokens"] for s in summary] == tokens
    assert summary[0]["tokens_saved"] == tokens[1] - tokens[0] and summary[1]["tokens_saved"] == 0
    assert summary[0]["pruned"] == sum(r[2] == "PRUNED" for r in rows_on)
    assert "early abort saved" in render_status(on, False) and "saved" not in render_status(off, False)


def test_wilcoxon_prunes_more_than_exact_and_keeps_every_parent_and_the_best(tmp_path):
    runs = {p: search(tmp_path, p, pruning_text(p)) for p in ("none", "exact", "wilcoxon")}
    rows = {p: trajectory(r)["long-256"] for p, r in runs.items()}
    assert [r[:2] for r in rows["wilcoxon"]] == [r[:2] for r in rows["none"]]
    assert parents_by_generation(runs["wilcoxon"]) == parents_by_generation(runs["none"])
    best = [json.loads(r.best_path("long", 256).read_text()) for r in runs.values()]
    assert best[0]["lambdas"] == best[2]["lambdas"] and best[0]["search_ppl"] == best[2]["search_ppl"]
    tokens = {p: stage_summaries(r)[0]["tokens"] for p, r in runs.items()}
    pruned = {p: sum(r[2] == "PRUNED" for r in rows[p]) for p in rows}
    assert tokens["wilcoxon"] < tokens["exact"] < tokens["none"] and pruned["wilcoxon"] > pruned["exact"]
    study = optuna.load_study(study_name="long-256", storage=runs["wilcoxon"].storage())
    reasons = [t.user_attrs.get("reason", "") for t in study.get_trials(deepcopy=False)]
    assert any("Wilcoxon" in r for r in reasons)


def test_pruner_p_and_startup_reach_the_test(tmp_path):
    # p 0.3 and a startup of 2 let the test prune after 2 documents (p = 1/4); the default startup
    # (3) never could, so a prune there shows both keys travelled from the config to the scorer
    text = pruning_text("wilcoxon").replace("[search]\n", "[search]\npruner_p = 0.3\npruner_startup = 2\n")
    study = optuna.load_study(study_name="long-256", storage=search(tmp_path, "w", text).storage())
    reasons = [t.user_attrs.get("reason", "") for t in study.get_trials(deepcopy=False)]
    assert any(r.startswith("Wilcoxon p < 0.3 ") and r.endswith(" after 2/" + r.rsplit("/", 1)[1]) for r in reasons)


def test_old_early_abort_key_reads_as_a_pruner():
    for old, new in ((True, "exact"), (False, "none")):
        text = small_cfg(iterations=6)[1].replace("[search]\n", f"[search]\nearly_abort = {str(old).lower()}\n")
        assert config.from_dict(tomllib.loads(text)).search.pruner == new


@pytest.mark.parametrize("pruner", ["exact", "wilcoxon"])
def test_kill_9_and_resume_with_pruning_equals_uninterrupted(tmp_path, pruner):
    import importlib.util
    from pathlib import Path

    where = Path(__file__).parents[1] / "runs" / "test_resume.py"
    spec = importlib.util.spec_from_file_location("resume_helpers", where)
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    kill_and_resume = helpers.kill_and_resume

    text = pruning_text(pruner)
    reference = search(tmp_path, "ref", text)
    run, kills = kill_and_resume(tmp_path, text, kills=2, after_lines=(20, 90), seed=1)
    assert kills == 2
    assert trajectory(run) == trajectory(reference)
    assert parents_by_generation(run) == parents_by_generation(reference)
