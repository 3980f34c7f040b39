"""A run keeps its model: weights replaced under its path are refused on resume, a moved copy
is taken (`resume --model NEW`), checked by the driver where it sees the path and by a Ray
worker where only the workers do (a cluster's head node that mounts no model)."""

import shutil
import tomllib

import pytest
from search_helpers import run_small, small_cfg, trajectory
from tiny_models import make_tiny_model_dir

from longrope.objectives.models import fingerprint
from longrope.runs import Run, vocab
from longrope.search import config, stagecheck
from longrope.search.driver import Driver, run_search
from longrope.spaces import UserError


def interrupted(tmp_path, model, **kw):
    """A run on `model` stopped part-way (7 evaluations), as by an interruption."""
    cfg, _ = small_cfg(model=model, iterations=1, **kw)
    cfg.search.max_evals = 7
    run = Run.create(tmp_path / "r", config.dumps(cfg))
    d = Driver(cfg, run, progress=False)
    d.run_all()
    d.backend.close()
    cfg.search.max_evals = 1000  # what a resume that finishes it runs with
    return cfg, run


def test_a_run_whose_model_folder_moved_resumes_with_model_new(tmp_path, tiny_model_dir, capsys):
    """The model folder of an interrupted run moved (a tidied folder, another node's mount): resume
    said "model path ... does not exist", and once config.toml was edited, "start a new --run-dir",
    which threw every evaluation away. `resume --model NEW` takes a copy holding the weights whose
    fingerprint the run recorded, and the finished run equals one never moved; other weights at
    NEW are refused, and so is an edited config.toml naming them."""
    from longrope.search.cli import main

    shutil.copytree(tiny_model_dir, tmp_path / "m")
    reference, _ = run_small(tmp_path, "reference", model=str(tmp_path / "m"), iterations=1)
    cfg, run = interrupted(tmp_path, str(tmp_path / "m"))
    (tmp_path / "m").rename(tmp_path / "moved")
    with pytest.raises(UserError, match=rf"was searched with model.path {tmp_path / 'm'}, which does not exist "
                                        r"now: .* moved, resume with --model NEW \(or link it there"):
        run_search(cfg, str(tmp_path / "r"), resume=True, progress=False)
    make_tiny_model_dir(tmp_path / "other", seed=1)  # the same architecture, other weights
    assert main(["resume", str(run.path), "--model", str(tmp_path / "other"), "--quiet"]) == 2
    assert f"model.path {tmp_path / 'other'} holds other weights than the run's model" in capsys.readouterr().err
    cfg.model.path = str(tmp_path / "other")  # config.toml edited to it: the same refusal
    with pytest.raises(UserError, match="holds other weights than the run's model"):
        run_search(cfg, str(tmp_path / "r"), resume=True, progress=False)

    assert main(["resume", str(run.path), "--model", str(tmp_path / "moved"), "--max-evals", "1000",
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"note: model.path {tmp_path / 'm'} -> {tmp_path / 'moved'}: the same weights" in err, err
    assert trajectory(run) == trajectory(reference)
    frozen = tomllib.loads((run.path / "config.toml").read_text())
    assert frozen["model"]["path"] == str(tmp_path / "moved")  # a plain resume goes on with it
    assert main(["resume", str(run.path), "--quiet"]) == 0


def test_a_moved_model_of_a_run_that_recorded_no_fingerprint_is_linked_back(tmp_path, tiny_model_dir):
    """A run whose stages recorded no fingerprint (none started, or made before they did) has
    nothing to check a copy against: both refusals name the link."""
    shutil.copytree(tiny_model_dir, tmp_path / "m")
    cfg, _ = small_cfg(model=str(tmp_path / "m"))
    Run.create(tmp_path / "r", config.dumps(cfg))
    (tmp_path / "m").rename(tmp_path / "moved")
    with pytest.raises(UserError, match=rf"which does not exist now: a run keeps its model; moved, link it there "
                                        rf"\(ln -s NEW {tmp_path / 'm'}; the run recorded no fingerprint"):
        run_search(cfg, str(tmp_path / "r"), resume=True, progress=False)
    cfg.model.path = str(tmp_path / "moved")  # config.toml edited to the new place
    with pytest.raises(UserError, match=r"another model.path: .*start a new --run-dir, or, if the model only "
                                        r"moved, link it at its old path \(ln -s NEW OLD; the run recorded no"):
        run_search(cfg, str(tmp_path / "r"), resume=True, progress=False)


def test_weights_replaced_under_the_runs_model_path_are_refused_on_resume(tmp_path, tiny_model_dir):
    """The same path, other weights (a re-download of another revision, a folder overwritten):
    the resumed search would rank their scores against the old ones without a word."""
    shutil.copytree(tiny_model_dir, tmp_path / "m")
    cfg, run = interrupted(tmp_path, str(tmp_path / "m"))
    shutil.rmtree(tmp_path / "m")
    make_tiny_model_dir(tmp_path / "m", seed=1)
    with pytest.raises(UserError, match=rf"model.path {tmp_path / 'm'} holds other weights than "
                                        rf"{tmp_path / 'r'} was searched on"):
        run_search(cfg, str(tmp_path / "r"), resume=True, progress=False)


def test_a_ray_run_whose_driver_does_not_see_the_model_records_a_workers_fingerprint(
        tmp_path, tiny_model_dir, ray_session, monkeypatch, capsys):
    """A head node that mounts no model recorded no fingerprint, so a moved model could only be
    linked back: a worker records it, a moved copy is taken (a worker checks it once the workers
    are up) and finishes as an unmoved run does, and other weights, at NEW or at the run's own
    path, are refused there before the run is changed."""
    from longrope.search.cli import main

    shutil.copytree(tiny_model_dir, tmp_path / "m")
    reference, _ = run_small(tmp_path, "reference", model=str(tmp_path / "m"), iterations=1, backend="ray")
    monkeypatch.setattr(stagecheck, "fingerprint", lambda path: None)  # the driver sees no model
    cfg, run = interrupted(tmp_path, str(tmp_path / "m"), backend="ray")
    (study,) = run.studies()
    assert study.user_attrs[vocab.MODEL] == fingerprint(str(tmp_path / "m"))  # the worker's view

    make_tiny_model_dir(tmp_path / "other", seed=1)
    assert main(["resume", str(run.path), "--model", str(tmp_path / "other"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"model.path {tmp_path / 'other'} holds other weights than the run's model {tmp_path / 'm'}" \
        in err, err
    assert tomllib.loads((run.path / "config.toml").read_text())["model"]["path"] == str(tmp_path / "m")
    (tmp_path / "m").rename(tmp_path / "moved")
    shutil.copytree(tmp_path / "other", tmp_path / "m")  # other weights under the run's own path
    before = (run.path / "config.toml").read_text()
    assert main(["resume", str(run.path), "--max-evals", "1000", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"model.path {tmp_path / 'm'} holds other weights than {run.path} was searched on" in err, err
    assert (run.path / "config.toml").read_text() == before  # refused before the budget is written
    assert main(["resume", str(run.path), "--model", str(tmp_path / "moved"), "--max-evals", "1000",
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"model.path {tmp_path / 'm'} -> {tmp_path / 'moved'}: not seen here: a Ray worker checks " \
           "its weights as they load" in err, err
    assert trajectory(run) == trajectory(reference)
