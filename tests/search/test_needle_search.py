"""A search on the needle objective: every candidate scores the recorded samples; a resume
checks it scores the same ones, and refuses when they changed."""


import json

import optuna
import pytest

from longrope.runs import Run, vocab
from longrope.runs.status import render_status
from longrope.search.cli import main

NEEDLE = """
[model]
path = "builtin:tiny-sotu"
threads = 2
[data]
search_docs = 2
heldout_docs = 1
[objective]
kind = "needle"
depths = 3
seed = 7
[space]
targets = [256]
deployable = true
[search]
population = 4
parents = 2
mutants = 1
crossovers = 1
iterations = 1
"""


def test_needle_search_records_its_samples_and_resume_checks_them(tmp_path, capsys):
    (tmp_path / "c.toml").write_text(NEEDLE)
    run_dir = tmp_path / "run"
    assert main(["search", str(tmp_path / "c.toml"), "--run-dir", str(run_dir), "--quiet"]) == 0
    run = Run.open(run_dir)
    (study,) = run.studies()
    samples = study.user_attrs[vocab.SAMPLES]
    assert [s["depth"] for s in samples] == [0.0, 0.5, 1.0] and all(s["length"] == 256 for s in samples)
    assert len({s["key"] for s in samples}) == 3 and [s["doc"] for s in samples] == [0, 1, 0]
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    assert len(trials) == 6 and all(len(t.user_attrs[vocab.DOC_NLL]) == 3 for t in trials)  # one NLL per sample
    best = run.best("long", 256)
    assert best.search_ppl == min(t.value for t in trials)
    # resume (budget reached: nothing to do) checks the recorded samples
    assert main(["resume", str(run_dir), "--quiet"]) == 0
    capsys.readouterr()
    storage = run.storage()
    optuna.load_study(study_name="long-256", storage=storage).set_user_attr(
        vocab.SAMPLES, [dict(s, key="11111") for s in samples])
    assert main(["resume", str(run_dir), "--quiet"]) == 2
    assert "the needle samples differ" in capsys.readouterr().err
    # the same positions and keys over other text (an edited document, another tokenizer): refused
    assert all(len(s["sha256"]) == 16 for s in samples)
    optuna.load_study(study_name="long-256", storage=storage).set_user_attr(
        vocab.SAMPLES, [dict(s, sha256="0" * 16) for s in samples])
    assert main(["resume", str(run_dir), "--quiet"]) == 2
    assert "the needle samples differ" in capsys.readouterr().err
    # a run recorded before the samples had their hash resumes, checked on the rest
    optuna.load_study(study_name="long-256", storage=storage).set_user_attr(
        vocab.SAMPLES, [{k: v for k, v in s.items() if k != "sha256"} for s in samples])
    assert main(["resume", str(run_dir), "--quiet"]) == 0


def test_needle_kind_is_validated(tmp_path, capsys):
    (tmp_path / "c.toml").write_text(NEEDLE.replace('kind = "needle"', 'kind = "needles"'))
    assert main(["search", str(tmp_path / "c.toml"), "--run-dir", str(tmp_path / "run")]) == 2
    assert "objective.kind = 'needles'; choose one of ppl, needle" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()



def test_a_stage_too_short_for_a_needle_sample_is_refused_before_the_run_is_made(tmp_path, capsys):
    """Before: the long stage ran (and wrote the run), then the short one raised as it started."""
    (tmp_path / "c.toml").write_text(NEEDLE.replace("deployable = true", "deployable = true\nshort = [32]"))
    assert main(["search", str(tmp_path / "c.toml"), "--run-dir", str(tmp_path / "run")]) == 2
    assert "a needle sample needs more than" in capsys.readouterr().err and not (tmp_path / "run").exists()


def ppl_run_on_a_copy(tmp_path, corpus):
    """A finished perplexity search of NEEDLE's shape on a copy of `corpus`: (its data, run dir)."""
    import shutil

    data = tmp_path / "docs"
    shutil.copytree(corpus, data)
    text = NEEDLE.replace('kind = "needle"', 'kind = "ppl"').replace("[data]", f'[data]\npath = "{data}"')
    (tmp_path / "c.toml").write_text(text)
    run_dir = tmp_path / "run"
    assert main(["search", str(tmp_path / "c.toml"), "--run-dir", str(run_dir), "--quiet"]) == 0
    return data, run_dir


def test_a_perplexity_search_records_its_documents_and_resume_refuses_changed_ones(
        tmp_path, capsys, text_corpus_dir):
    """Before: a resume on an edited data file (or a new dataset revision) scored other documents
    and ranked them with the old scores, with no word."""
    data, run_dir = ppl_run_on_a_copy(tmp_path, text_corpus_dir)
    (study,) = Run.open(run_dir).studies()
    docs = study.user_attrs[vocab.DOCUMENTS]
    assert [d["tokens"] for d in docs] == [256, 256] and len({d["sha256"] for d in docs}) == 2
    assert main(["resume", str(run_dir), "--quiet"]) == 0  # the same files: the same documents
    for f in data.iterdir():  # an edited corpus: every document starts otherwise
        f.write_text("Revised edition. " + f.read_text())
    capsys.readouterr()
    assert main(["resume", str(run_dir), "--quiet"]) == 2
    assert "long-256: the search documents differ" in capsys.readouterr().err


def test_a_stage_records_the_dtype_it_scores_in_and_resume_refuses_another(tmp_path, capsys):
    """Before: model.dtype = auto resumed on another device (a bf16 GPU run resumed on a CPU)
    ranked float32 scores against bfloat16 ones with no word. Now the resolved dtype is recorded
    per stage and must match; model.dtype itself may change in a run, to make it match."""
    (tmp_path / "c.toml").write_text(NEEDLE)
    run_dir = tmp_path / "run"
    assert main(["search", str(tmp_path / "c.toml"), "--run-dir", str(run_dir), "--quiet"]) == 0
    run = Run.open(run_dir)
    (study,) = run.studies()
    assert study.user_attrs[vocab.DTYPE] == "float32"  # auto on a CPU
    (stage,) = json.loads(render_status(run, True))["stages"]
    assert stage["dtype"] == "float32" and "critical dim off, float32, " in render_status(run, False)
    config = run_dir / "config.toml"
    auto = config.read_text()
    assert 'dtype = "auto"' in auto
    config.write_text(auto.replace('dtype = "auto"', 'dtype = "bfloat16"'))
    capsys.readouterr()
    assert main(["resume", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "long-256 was scored in float32 so far, but these workers load the model in bfloat16 " \
           "(model.dtype = 'bfloat16')" in err
    config.write_text(auto.replace('dtype = "auto"', 'dtype = "float32"'))  # what auto resolved to: fine
    assert main(["resume", str(run_dir), "--quiet"]) == 0
    # as if the stage had been scored on an A100 (auto: bfloat16), resumed on this CPU with auto
    optuna.load_study(study_name="long-256", storage=run.storage()).set_user_attr(vocab.DTYPE, "bfloat16")
    config.write_text(auto)
    capsys.readouterr()
    assert main(["resume", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "long-256 was scored in bfloat16 so far, but these workers load the model in float32 " \
           "(model.dtype = 'auto' on their device): set dtype = 'bfloat16' under [model]" in err
    # resumed on Ray with --workers N and no GPUs asked for, on the GPU machine the stage ran on:
    # the replicas run on the CPU (workers.on_ray_worker), and bf16 on a CPU is not the way out
    from types import SimpleNamespace

    from longrope.search import config as configs
    from longrope.search.stagecheck import check_precision
    from longrope.spaces import UserError

    cfg = configs.load(config)
    cfg.workers.backend = "ray"
    backend = type("B", (), {"precision": lambda self: "float32"})()
    study = optuna.load_study(study_name="long-256", storage=run.storage())
    with pytest.raises(UserError, match=r"\(model.dtype = 'auto' on their device\) \(on the CPU: workers.num_gpus "
                                        r"= 0 on Ray; set it to 1, or a share of one, if the stage ran on GPUs\)"):
        check_precision(backend, cfg, run, SimpleNamespace(name="long-256"), study)
    config.write_text(auto.replace('dtype = "auto"', 'dtype = "bfloat16"'))  # the advice, taken
    assert main(["resume", str(run_dir), "--quiet"]) == 0


def test_held_out_text_edited_under_a_run_is_scored_again_on_resume(tmp_path, capsys, text_corpus_dir):
    """The stage best's held-out score is cached with a hash of the held-out text: a resume after
    the held-out documents were edited scores them again (before: the old score was kept, and
    only the search documents were checked). A cache written before it held the hash is kept."""
    from longrope.objectives.data import Split, load_data
    from longrope.objectives.specs import DataSpec

    data, run_dir = ppl_run_on_a_copy(tmp_path, text_corpus_dir)
    run = Run.open(run_dir)
    first = run.best("long", 256).heldout_ppl
    (study,) = run.studies()
    cached = study.user_attrs[vocab.HELDOUT]
    assert cached["ppl"] == first and len(cached["text"]) == 16
    assert main(["resume", str(run_dir), "--quiet"]) == 0 and run.best("long", 256).heldout_ppl == first
    # an old run's cache (no hash) is taken as it is
    storage = run.storage()
    optuna.load_study(study_name="long-256", storage=storage).set_user_attr(
        vocab.HELDOUT, {"trial": cached["trial"], "ppl": 1.5})
    assert main(["resume", str(run_dir), "--quiet"]) == 0 and run.best("long", 256).heldout_ppl == 1.5
    optuna.load_study(study_name="long-256", storage=storage).set_user_attr(vocab.HELDOUT, cached)
    corpus = load_data(DataSpec(str(data)))
    for i in Split.make(len(corpus.texts), 0).heldout:  # every held-out document, none searched
        (data / corpus.ids[i]).write_text("Revised edition. " * 30 + (data / corpus.ids[i]).read_text())
    capsys.readouterr()
    assert main(["resume", str(run_dir), "--quiet"]) == 0
    now = run.best("long", 256).heldout_ppl
    assert now != first and "the held-out text changed" in capsys.readouterr().err
    assert optuna.load_study(study_name="long-256", storage=storage).user_attrs[vocab.HELDOUT]["ppl"] == now
