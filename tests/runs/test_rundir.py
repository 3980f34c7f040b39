"""The run directory: its tree, the lock, damage, changed configs, the dashboard."""

import errno
import json
import os
import subprocess
import sys
import tomllib

import optuna
import pytest
from search_helpers import run_small, small_cfg

from longrope.runs import Run
from longrope.runs.lease import RunBusy
from longrope.search import config
from longrope.spaces import UserError


def longrope(*args):
    return subprocess.run([sys.executable, "-m", "longrope.search", *args], capture_output=True, text=True)


def tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_run_tree_is_exactly_the_documented_one(tmp_path):
    run, _ = run_small(tmp_path, short="[32]")
    r = longrope("export", str(run.path))
    assert r.returncode == 0, r.stderr
    assert tree(run.path) == ["best", "best/long-256.json", "best/short-32.json", "config.toml",
                              "events.log", "export", "export/longrope-256.json", "journal.log"]
    # run.lock exists only while a driver runs; the runs docstring draws this tree
    import longrope.runs as runs_pkg

    for name in ("config.toml", "journal.log", "best/long-<L>.json", "run.lock", "events.log"):
        assert name in runs_pkg.__doc__


def test_journal_opens_with_plain_optuna(tmp_path):
    run, _ = run_small(tmp_path)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(run.journal)))
    study = optuna.load_study(study_name="long-256", storage=storage)
    assert len(study.trials) == 36 and study.best_value > 0


def test_lock_refuses_second_driver_and_takes_over_stale(tmp_path):
    run = Run.create(tmp_path / "r", "[model]\n")
    with run.lock():
        with pytest.raises(UserError, match="in use by pid"):
            with run.lock():
                pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (run.path / "run.lock").write_text(json.dumps({"pid": int(dead), "host": os.uname().nodename}))
    with run.lock():
        assert json.loads((run.path / "run.lock").read_text())["pid"] == os.getpid()
    assert not (run.path / "run.lock").exists()


def test_changed_search_defining_key_is_refused_naming_it(tmp_path):
    run, _ = run_small(tmp_path, iterations=1)
    before = tree(run.path), (run.path / "journal.log").read_bytes()
    _, text = small_cfg(iterations=1, seed=7)
    (tmp_path / "changed.toml").write_text(text)
    r = longrope("search", str(tmp_path / "changed.toml"), "--run-dir", str(run.path), "--quiet")
    assert r.returncode == 2 and "search.seed: 0 -> 7" in r.stderr and "Traceback" not in r.stderr
    assert (tree(run.path), (run.path / "journal.log").read_bytes()) == before
    _, text = small_cfg(iterations=2)  # a budget increase is allowed
    (tmp_path / "more.toml").write_text(text)
    r = longrope("search", str(tmp_path / "more.toml"), "--run-dir", str(run.path), "--quiet")
    assert r.returncode == 0, r.stderr
    # and it becomes the run's: status, report and a later resume go by it, not the first budget
    assert tomllib.loads((run.path / "config.toml").read_text())["search"]["iterations"] == 2
    assert "config: search.iterations: 1 -> 2" in (run.path / "events.log").read_text()
    r = longrope("resume", str(run.path), "--quiet", "--workers", "1")  # unchanged: nothing rewritten
    assert r.returncode == 0 and (run.path / "events.log").read_text().count("config: ") == 1


def test_a_defining_key_edited_in_the_runs_config_toml_is_refused_on_resume(tmp_path):
    """README: edit model.dtype in RUN/config.toml to resume elsewhere. A step or a seed edited
    there was taken as the run's own (resume compared the file with itself): the resumed search
    mixed two grids. The stages' journal record is checked too; what may change still can."""
    run, _ = run_small(tmp_path, iterations=1)
    original = (run.path / "config.toml").read_text()
    for edit, said in (({"space": "step = 0.3"}, "space.step: 0.01 -> 0.3"),
                       ({"search": "seed = 7"}, "search.seed: 0 -> 7")):
        data = tomllib.loads(original)
        for section, line in edit.items():
            key, value = line.split(" = ")
            data[section][key] = tomllib.loads(line)[key]
        (run.path / "config.toml").write_text(config.dumps(config.from_dict(data)))
        before = (run.path / "journal.log").read_bytes()
        r = longrope("resume", str(run.path), "--quiet")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert f"was searched with another {said} (as long-256 recorded it in the journal; was " in r.stderr
        assert (run.path / "journal.log").read_bytes() == before
    data = tomllib.loads(original)
    data["search"]["iterations"], data["model"]["dtype"] = 2, "float32"  # the budget and dtype may change
    (run.path / "config.toml").write_text(config.dumps(config.from_dict(data)))
    r = longrope("resume", str(run.path), "--quiet")
    assert r.returncode == 0, r.stderr


def test_not_a_run_directory_is_one_line_and_untouched(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    for args in (("resume",), ("status",), ("export",)):
        r = longrope(*args, str(tmp_path / "junk"))
        assert r.returncode == 2 and r.stderr.count("\n") == 1
        assert "is not a run directory: no config.toml" in r.stderr
    assert tree(tmp_path / "junk") == ["notes.txt"]
    (tmp_path / "junk" / "config.toml").write_text("[model\n")
    (tmp_path / "junk" / "journal.log").write_text("")
    r = longrope("resume", str(tmp_path / "junk"))
    assert r.returncode == 2 and "unreadable" in r.stderr


def test_status_json_has_the_stages(tmp_path):
    run, _ = run_small(tmp_path, short="[32]", pruner="exact")  # no pruning here: every token scored
    r = longrope("status", str(run.path), "--json")
    assert r.returncode == 0, r.stderr
    stages = json.loads(r.stdout)["stages"]
    assert [s["name"] for s in stages] == ["long-256", "short-32"]
    for s in stages:
        assert {"name", "target", "evals", "budget", "best_ppl", "done"} <= set(s)
        assert s["evals"] == s["budget"] == 36 and s["done"] and s["best_ppl"] > 1
        assert s["critical_dim"] is None and s["pruned"] == 0 and s["tokens_saved"] == 0
    assert stages[0]["tokens"] == 36 * 5 * 256 and stages[1]["tokens"] == 36 * 5 * 32  # synthetic: 5 docs of L
    text = longrope("status", str(run.path)).stdout
    assert "long-256: 36/36 evals" in text and "done" in text
    assert "tokens 46.1k, critical dim off" in text


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "no-hard-links"])
def test_two_drivers_creating_one_run_at_once_do_not_both_write_its_config(tmp_path, monkeypatch, links):
    """Both pass check_new (the folder is empty for both); the second's config must not replace the
    first's, or the first would search with a config its run folder does not record. On a file
    system without hard links (os.link: EPERM) the claim fell back to a plain, unguarded write."""
    if not links:
        def no_link(*a, **kw):
            raise PermissionError(errno.EPERM, "Operation not permitted")
        monkeypatch.setattr(os, "link", no_link)
    from longrope.runs import rundir

    Run.create(tmp_path / "r", "first = 1\n")
    assert (tmp_path / "r" / "config.toml").read_text() == "first = 1\n"
    # the second found no run when it started (run_search's check) and the first made it since: busy
    # (exit 75, like any second driver of a run), not "exists and is not empty" (exit 2, which a
    # requeue loop takes for a bad config and gives up on)
    with pytest.raises(RunBusy, match="was made a run by another driver just now, while this one started"):
        Run.create(tmp_path / "r", "second = 2\n")
    real = rundir.make_folder

    def first_claims_meanwhile(path, what):  # after the second's own checks, before its claim
        real(path, what)
        if not (tmp_path / "r2" / "config.toml").exists():
            (tmp_path / "r2" / "config.toml").write_text("first = 1\n")

    monkeypatch.setattr(rundir, "make_folder", first_claims_meanwhile)
    with pytest.raises(RunBusy, match="was made a run by another driver just now"):
        Run.create(tmp_path / "r2", "second = 2\n")
    for r in ("r", "r2"):
        assert (tmp_path / r / "config.toml").read_text() == "first = 1\n"
    assert not list(tmp_path.glob("r*/.*claim*"))


KILL_AT = """
import builtins, os, signal, sys
from longrope.runs import Run
k, calls = int(sys.argv[2]), [0]
def counted(f):
    def g(*a, **kw):
        calls[0] += 1
        if calls[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9: no handler, no finally runs
        return f(*a, **kw)
    return g
def no_link(*a, **kw):
    raise PermissionError(1, "Operation not permitted")
if sys.argv[3] == "no-hard-links":
    os.link = no_link
for name in ("mkdir", "open", "link", "replace", "unlink", "fsync", "rename"):
    setattr(os, name, counted(getattr(os, name)))
builtins.open = counted(builtins.open)
Run.create(sys.argv[1], "[space]\\ntargets = [256]\\n")
"""


@pytest.mark.parametrize("links", ["hard-links", "no-hard-links"])
def test_a_run_creation_killed_at_any_file_operation_is_whole_or_taken_by_the_next_search(tmp_path, links):
    """config.toml is written last: a folder that has one is a whole run (resume opens it), and one
    a kill -9 left without it is taken by the next search on that --run-dir (it was refused: 'exists
    and is not empty', and resume said 'no config.toml', so only a manual rm got the user going).
    Without hard links the claim is an empty config.toml for a moment: taken the same way."""
    config_text, k = "[space]\ntargets = [256]\n", 0
    while True:
        k += 1
        p = tmp_path / f"r{k}"
        r = subprocess.run([sys.executable, "-c", KILL_AT, str(p), str(k), links], capture_output=True, text=True)
        if r.returncode == 0:
            break
        assert r.returncode == -9, r.stderr
        if (p / "config.toml").exists() and (p / "config.toml").stat().st_size:
            assert Run.open(p).config_text() == config_text
            continue
        if p.exists() and any(p.iterdir()):
            r = longrope("resume", str(p))
            assert r.returncode == 2 and "creation was cut off" in r.stderr and r.stderr.count("\n") == 1
        Run.create(p, config_text)  # the next search takes the folder
        assert Run.open(p).config_text() == config_text
    assert k > 6  # every operation of the creation was a kill point (folders, files, the claim)


def test_a_resume_clears_what_kill_9s_left_in_the_run_folder(tmp_path):
    """Temp files of best/ and config.toml writes, half a release of Optuna's journal lock, and a
    creation's claim, each left by a driver killed mid-write, stayed after the resume (and piled up
    over preemptions); a live writer's temp file stays."""
    run, _ = run_small(tmp_path)
    before = tree(run.path)
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout.strip()
    left = [f"best/.long-256.json.{dead}.tmp", "journal.log.lock5a1f0c.rename", f".config.toml.{dead}.tmp",
            f".config.toml.{dead}.claim", f"..config.toml.{dead}.claim.{dead}.tmp"]
    for name in left:
        (run.path / name).write_text("x")
    live = run.path / "best" / f".long-256.json.{os.getpid()}.tmp"  # a writer that still runs
    live.write_text("x")
    r = longrope("resume", str(run.path), "--quiet")
    assert r.returncode == 0, r.stderr
    assert tree(run.path) == sorted([*before, str(live.relative_to(run.path))])


def test_an_intact_journal_is_left_as_it_is_and_a_torn_last_line_dropped(tmp_path):
    """repair_journal runs on every resume: on a healthy journal it must do nothing (a wrong end
    truncates a sound run and says it dropped a line); a torn last line goes, whole lines stay."""
    run = Run.create(tmp_path / "r", "[space]\ntargets = [256]\n")
    assert run.repair_journal() is None  # empty
    lines = b'{"op_code": 0, "study_name": "a", "directions": [1]}\n{"op_code": 4, "study_id": 0}\n'
    run.journal.write_bytes(lines)
    assert run.repair_journal() is None and run.journal.read_bytes() == lines
    run.journal.write_bytes(lines + b'{"op_code": 5, "tri')
    assert run.repair_journal() == "dropped a torn last journal line (19 bytes)"
    assert run.journal.read_bytes() == lines


def test_a_folder_with_results_but_no_config_is_not_taken_for_a_cut_off_creation(tmp_path, capsys):
    """Only the empty skeleton Run.create writes before config.toml may be taken by a new search;
    a folder whose best/ or export/ holds files (a run whose config.toml was deleted) is not."""
    from longrope.search.cli import main

    for sub in ("best", "export"):
        p = tmp_path / sub
        Run.create(p, "[space]\ntargets = [256]\n")
        (p / "config.toml").unlink()
        (p / sub / "long-256.json").write_text("{}")
        with pytest.raises(UserError, match="exists and is not empty"):
            Run.check_new(p)
        assert main(["status", str(p)]) == 2
        assert "is not a run directory: no config.toml" in capsys.readouterr().err
        assert main(["resume", str(p)]) == 2
        assert "creation was cut off" not in capsys.readouterr().err


def test_a_stray_best_file_is_ignored(tmp_path):
    """best/long-1024-old.json (a user's copy) beside the run's own: bests(), best(), status and
    export read the records named by a length only, not a ValueError traceback."""
    from longrope.runs.best import BestRecord
    from longrope.search.cli import main

    run, _ = run_small(tmp_path)
    record = run.best("long")
    (run.path / "best" / "long-256-old.json").write_text(record.to_json())
    assert list(run.bests("long")) == [256] and run.best("long") == record
    assert isinstance(BestRecord.load(run.best_path("long", 256)), BestRecord)
    assert main(["status", str(run.path)]) == 0 and main(["export", str(run.path)]) == 0
