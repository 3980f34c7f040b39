"""Damaged runs lose nothing: a garbage journal line, stale locks, unreadable files, bad run dirs.
Each refusal is one line through the CLI (exit 2) and changes nothing."""

import json
import shutil

import pytest
from search_helpers import SMALL, ctrl_c_after, small_cfg, trajectory

from longrope.runs import Run
from longrope.search.cli import main

SET_STATE = 6  # Optuna's JournalOperation.SET_TRIAL_STATE_VALUES
CREATE_TRIAL = 4


def one_line(capsys, rc, message):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and message in lines[0] and "Traceback" not in err, err


def snapshot(path):
    return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else b"") for p in path.rglob("*"))


@pytest.fixture()
def cfg_file(tmp_path):
    _, text = small_cfg()
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    (d / "c.toml").write_text(small_cfg()[1])
    assert main(["search", str(d / "c.toml"), "--run-dir", str(d / "run"), "--quiet"]) == 0
    return trajectory(Run.open(d / "run"))


def completed_state_lines(journal):
    lines = journal.read_text().splitlines()
    return [i for i, ln in enumerate(lines) if (r := json.loads(ln))["op_code"] == SET_STATE and r["state"] == 1]


@pytest.mark.parametrize("damage", [
    lambda line: '{"op_code": 6, "worker_id": "x", "trial_id": 3, "state": 1, "val\x00\x00ues": [1.2',
    # a bit flipped in a key Optuna's replay reads only of a finished trial: it passed as a record,
    # and status and resume ended in Optuna's KeyError
    lambda line: line.replace("datetime_complete", "datetime_complexe")], ids=["garbage", "finished-key"])
def test_garbage_line_is_refused_then_repaired_to_the_same_result(tmp_path, cfg_file, capsys, reference,
                                                                  monkeypatch, damage):
    """Refused before the workers load the model (minutes on a cluster, for a one-line refusal)."""
    from longrope.search.plan import Plan

    started, start = [], Plan.start_backend
    monkeypatch.setattr(Plan, "start_backend", lambda self: started.append(1) or start(self))
    run_dir = tmp_path / "run"
    assert main(["search", str(cfg_file), "--run-dir", str(run_dir), "--quiet", "--max-evals", "24"]) == 0
    journal = run_dir / "journal.log"
    lines = journal.read_text().splitlines()
    hit = completed_state_lines(journal)[5]  # a finished trial's result, mid-file
    lines[hit] = damage(lines[hit])
    journal.write_text("\n".join(lines) + "\n")
    before = snapshot(run_dir)
    started.clear()
    for argv in (["status", str(run_dir)], ["resume", str(run_dir), "--quiet"]):
        one_line(capsys, main(argv), f"line {hit + 1} is not a journal record")
    assert snapshot(run_dir) == before and not started
    assert main(["resume", str(run_dir), "--quiet", "--repair", "--max-evals", "36"]) == 0
    assert "dropped 1 unreadable journal line" in capsys.readouterr().err
    assert list(run_dir.glob("journal.log.bak-*"))  # the damaged journal is kept
    assert trajectory(Run.open(run_dir)) == reference  # the lost result was re-run, the same


@pytest.mark.parametrize("record", ['{"op_code": 99, "worker_id": "x"}', '{"op_code": 4, "worker_id": "x"}',
                                    '{"op_code": 6, "worker_id": "x", "trial_id": 3, "state": 1, "valuez": null}'])
def test_a_json_line_that_is_no_journal_record_is_refused_in_one_line(tmp_path, cfg_file, capsys, record):
    """Valid JSON with an op_code, but not a record Optuna can replay (an unknown op_code, a key
    with a flipped bit): status and export ended in Optuna's AssertionError or a KeyError."""
    run_dir = tmp_path / "run"
    assert main(["search", str(cfg_file), "--run-dir", str(run_dir), "--quiet", "--max-evals", "12"]) == 0
    journal = run_dir / "journal.log"
    lines = journal.read_text().splitlines()
    at = len(lines) // 2
    lines.insert(at, record)
    journal.write_text("\n".join(lines) + "\n")
    for argv in (["status", str(run_dir)], ["export", str(run_dir)]):
        one_line(capsys, main(argv), f"line {at + 1} is not a journal record")


def test_a_damaged_record_of_a_finished_trial_is_refused_and_a_stray_line_dropped(tmp_path, cfg_file, capsys,
                                                                                   reference):
    """--repair dropped any unreadable line; one that had been a finished trial's parameter, slot or
    doc_nll left it finished without it: a KeyError on every resume, a run that read done short
    of its budget, or a resumed search unlike the uninterrupted one."""
    base = tmp_path / "base"
    assert main(["search", str(cfg_file), "--run-dir", str(base), "--quiet", "--max-evals", "24"]) == 0
    records = [json.loads(ln) for ln in (base / "journal.log").read_text().splitlines()]
    for op, lacks in ((5, "parameter lambda_"), (9, "system attribute longrope_slot"), (8, "attribute doc_nll")):
        run_dir = tmp_path / f"op{op}"
        shutil.copytree(base, run_dir)
        lines = (run_dir / "journal.log").read_text().splitlines()
        hit = next(i for i, r in enumerate(records) if r["op_code"] == op and r.get("trial_id") == 5
                   and (op != 8 or "doc_nll" in r["user_attr"]))
        lines[hit] = lines[hit][:40] + "\x00\x00"  # torn in place: the record is gone
        (run_dir / "journal.log").write_text("\n".join(lines) + "\n")
        before = snapshot(run_dir)
        one_line(capsys, main(["resume", str(run_dir), "--quiet", "--repair", "--max-evals", "36"]),
                 f"journal line {hit + 1} lies among the records of trial 5 of long-256, finished after "
                 f"it, which lacks {lacks}")
        assert snapshot(run_dir) == before
    run_dir = tmp_path / "stray"  # a line written into the journal, inside trial 5's records
    shutil.copytree(base, run_dir)
    lines = (run_dir / "journal.log").read_text().splitlines()
    at = next(i for i, r in enumerate(records) if r["op_code"] == 5 and r.get("trial_id") == 5)
    (run_dir / "journal.log").write_text("\n".join(lines[:at] + ["\x00garbage\x00"] + lines[at:]) + "\n")
    assert main(["resume", str(run_dir), "--quiet", "--repair", "--max-evals", "36"]) == 0
    assert trajectory(Run.open(run_dir)) == reference


def test_the_re_queue_mark_of_the_only_failed_trial_is_not_dropped(tmp_path, cfg_file, capsys, monkeypatch):
    """One Ctrl-C leaves one re-queued FAIL trial. A torn line among its records was dropped
    unchecked (there was no other FAIL trial to compare it with): without its re-queue mark it
    kept its slot beside its copy, and the run read done at 30 of 36 with another best."""
    ctrl_c_after(monkeypatch, 14)
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        main(["search", str(cfg_file), "--run-dir", str(run_dir), "--quiet"])
    assert stop.value.code == 130
    monkeypatch.undo()
    lines = (run_dir / "journal.log").read_text().splitlines()
    [hit] = [i for i, ln in enumerate(lines) if "longrope_requeued" in ln]
    lines[hit] = "\x00\x00\x00 a damaged sector"
    (run_dir / "journal.log").write_text("\n".join(lines) + "\n")
    before = snapshot(run_dir)
    capsys.readouterr()
    one_line(capsys, main(["resume", str(run_dir), "--quiet", "--repair"]),
             f"journal line {hit + 1} lies among the records of trial 14 of long-256, finished after it, "
             "the only FAIL trial of its study")
    assert snapshot(run_dir) == before


def test_a_lost_queued_copy_is_queued_again(tmp_path, cfg_file, capsys, monkeypatch, reference):
    """A Ctrl-C with two candidates in flight re-queues each as one journal line (a WAITING
    CREATE_TRIAL) that no later record names: --repair dropped the first torn without a word,
    and the resumed search scored the other's slot twice and that one never. It is queued again."""
    from longrope.search.backends import InProcessBackend

    init = InProcessBackend.__init__

    def two_at_once(self, spec):
        init(self, spec)
        self.capacity = 2  # scored one after the other, told as two workers would

    monkeypatch.setattr(InProcessBackend, "__init__", two_at_once)
    ctrl_c_after(monkeypatch, 14)
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit):
        main(["search", str(cfg_file), "--run-dir", str(run_dir), "--quiet"])
    monkeypatch.undo()
    lines = (run_dir / "journal.log").read_text().splitlines()
    first = [i for i, ln in enumerate(lines) if (r := json.loads(ln))["op_code"] == CREATE_TRIAL
             and "longrope_slot" in r.get("user_attrs", {})][0]
    lines[first] = lines[first][:30] + "\x00\x00"
    (run_dir / "journal.log").write_text("\n".join(lines) + "\n")
    assert main(["resume", str(run_dir), "--quiet", "--repair"]) == 0
    assert trajectory(Run.open(run_dir)) == reference
    # the copy waiting behind the lost slot was failed and queued again: status and report read it
    assert main(["status", str(run_dir)]) == 0 and main(["report", str(run_dir)]) == 0
    assert "36/36" in capsys.readouterr().out


def test_stale_journal_lock_and_empty_run_lock_are_taken_over(tmp_path, cfg_file, capsys, monkeypatch):
    monkeypatch.setattr("longrope.runs.lease.HEARTBEAT", 0.2)  # the unreadable lock is watched 0.4 s
    run_dir = tmp_path / "run"
    assert main(["search", str(cfg_file), "--run-dir", str(run_dir), "--quiet", "--max-evals", "12"]) == 0
    (run_dir / "journal.log.lock").write_text("")  # what a kill -9 can leave behind
    (run_dir / "run.lock").write_text("")  # a driver killed while writing its lock
    capsys.readouterr()
    assert main(["resume", str(run_dir), "--quiet", "--max-evals", "18"]) == 0
    err = capsys.readouterr().err
    assert "taking over an unreadable lock file" in err and "Traceback" not in err
    assert not (run_dir / "journal.log.lock").exists() and not (run_dir / "run.lock").exists()
    assert "cleared a journal lock" in (run_dir / "events.log").read_text()


def test_bad_run_directories(tmp_path, cfg_file, capsys, monkeypatch):
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    one_line(capsys, main(["search", str(cfg_file), "--run-dir", str(a_file), "--quiet"]), "exists and is not a directory")
    assert a_file.read_text() == "x"
    run_dir = tmp_path / "run"
    assert main(["search", str(cfg_file), "--run-dir", str(run_dir), "--quiet", "--max-evals", "12"]) == 0
    before = snapshot(run_dir)
    import os

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p).endswith("journal.log") else real(p, m))
    one_line(capsys, main(["resume", str(run_dir), "--quiet", "--max-evals", "18"]), "journal.log (permission denied)")
    monkeypatch.undo()
    assert snapshot(run_dir) == before
    (run_dir / "config.toml").write_bytes(SMALL.encode()[:20] + b"\xff\xfe\n")
    for argv in (["status", str(run_dir)], ["resume", str(run_dir)], ["export", str(run_dir)]):
        one_line(capsys, main(argv), "is not UTF-8 text")
    # another tool's config.toml beside a journal.log: status called it a finished run and report
    # wrote into it; a top-level key that is no table was a traceback
    other = tmp_path / "other"
    other.mkdir()
    (other / "journal.log").touch()
    for text in ('[tool]\nname = "x"\n', "search = 1\n"):
        (other / "config.toml").write_text(text)
        for argv in (["status", str(other)], ["report", str(other)], ["resume", str(other)]):
            one_line(capsys, main(argv), "is not a run directory: its config.toml is not a run's")
    assert sorted(p.name for p in other.iterdir()) == ["config.toml", "journal.log"]


def test_repair_refuses_to_drop_a_line_that_created_a_trial(tmp_path, cfg_file, capsys):
    """Optuna numbers trials by their CREATE_TRIAL records: dropped, every later trial would take its
    predecessor's parameters and results. The records after it name a trial not yet created, which
    tells such a line, and --repair refuses with the journal as it was."""
    run_dir = tmp_path / "run"
    assert main(["search", str(cfg_file), "--run-dir", str(run_dir), "--quiet", "--max-evals", "24"]) == 0
    journal = run_dir / "journal.log"
    lines = journal.read_text().splitlines()
    hit = [i for i, ln in enumerate(lines) if json.loads(ln)["op_code"] == CREATE_TRIAL][7]
    lines[hit] = '{"op_code": 4, "study_id": 0, "dat\x00\x00'
    journal.write_text("\n".join(lines) + "\n")
    before = snapshot(run_dir)
    one_line(capsys, main(["resume", str(run_dir), "--quiet", "--repair"]),
             f"line {hit + 1} cannot be dropped: the records after it name trial 7 before")
    assert snapshot(run_dir) == before


def test_repair_counts_trials_as_optuna_does_after_a_deleted_study(tmp_path, cfg_file, capsys):
    """A CREATE_TRIAL naming a deleted study creates nothing (Optuna's _apply_create_trial skips
    it), so it takes no trial id. Counted as one, every later trial's records seemed to start at
    its predecessor's creation, and the refusal named a harmless stray line in trial 4's records
    instead of the torn one of trial 5."""
    run_dir = tmp_path / "run"
    assert main(["search", str(cfg_file), "--run-dir", str(run_dir), "--quiet", "--max-evals", "24"]) == 0
    records = [json.loads(ln) for ln in (run_dir / "journal.log").read_text().splitlines()]
    for r in records:  # a study created and deleted before the run's own: theirs move up one id
        if "study_id" in r:
            r["study_id"] += 1
    w = "another-process"
    records = [{"op_code": 0, "worker_id": w, "study_name": "scratch", "directions": [1]},
               {"op_code": 1, "worker_id": w, "study_id": 0},
               {"op_code": CREATE_TRIAL, "worker_id": w, "study_id": 0, "datetime_start": None}] + records
    lines = [json.dumps(r) for r in records]
    stray = next(i for i, r in enumerate(records) if r["op_code"] == 5 and r.get("trial_id") == 4)
    torn = next(i for i, r in enumerate(records) if r["op_code"] == 5 and r.get("trial_id") == 5)
    lines[torn] = lines[torn][:40] + "\x00\x00"
    lines.insert(stray, "\x00garbage\x00")  # before the torn one: its number moves up one
    (run_dir / "journal.log").write_text("\n".join(lines) + "\n")
    before = snapshot(run_dir)
    one_line(capsys, main(["resume", str(run_dir), "--quiet", "--repair"]),
             f"journal line {torn + 2} lies among the records of trial 5 of long-256")
    assert snapshot(run_dir) == before


def test_repair_of_a_read_only_run_is_one_line_before_the_lock(tmp_path, cfg_file, capsys, monkeypatch):
    """On a read-only mount the lock's guard file cannot be created: --repair took the lock
    before it checked, and ended in that OSError's traceback."""
    import errno
    import os

    run_dir = tmp_path / "run"
    assert main(["search", str(cfg_file), "--run-dir", str(run_dir), "--quiet", "--max-evals", "12"]) == 0
    before = snapshot(run_dir)
    real_access, real_open = os.access, os.open

    def read_only(path, *a, **kw):  # what a read-only mount answers (root ignores chmod)
        if str(path).startswith(str(run_dir)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(os, "access", lambda p, m: False if str(p).startswith(str(run_dir)) and m == os.W_OK
                        else real_access(p, m))
    monkeypatch.setattr(os, "open", read_only)
    one_line(capsys, main(["resume", str(run_dir), "--quiet", "--repair"]), "(permission denied)")
    monkeypatch.undo()
    assert snapshot(run_dir) == before


def test_an_emptied_run_config_is_refused_not_read_as_defaults(tmp_path, cfg_file, capsys):
    """A run's config.toml emptied (a truncating tool, a full disk) resumed as all defaults: a new
    default stage searched into the run, and status, export and report took it without a word."""
    run_dir = tmp_path / "run"
    assert main(["search", str(cfg_file), "--run-dir", str(run_dir), "--quiet", "--max-evals", "12"]) == 0
    (run_dir / "config.toml").write_text("\n")
    before = snapshot(run_dir)
    capsys.readouterr()
    for argv in (["resume", str(run_dir), "--quiet", "--max-evals", "13"], ["status", str(run_dir)],
                 ["export", str(run_dir)], ["report", str(run_dir)]):
        one_line(capsys, main(argv), "config.toml is empty; a run writes its whole config when it starts")
    assert snapshot(run_dir) == before


def _journal(*records):
    return [json.dumps(r).encode() if isinstance(r, dict) else r for r in records]


def test_repair_names_the_dropped_line_that_created_what_later_records_name():
    """With two bad lines before a record naming a trial not yet created, the line to restore is
    the later one (the CREATE_TRIAL), not the garbage before it."""
    from longrope.runs.repair import refuse_unsafe_drop
    from longrope.spaces import UserError

    lines = _journal({"op_code": 0, "study_name": "long-256", "directions": [1]}, b"\x00garbage\x00",
                     b'{"op_code": 4, "study_id": 0, "dat\x00', {"op_code": 5, "trial_id": 0, "param_name": "x"})
    with pytest.raises(UserError, match="^journal line 3 cannot be dropped: the records after it name trial 0"):
        refuse_unsafe_drop([2, 3], lines)


def test_repair_counts_a_study_created_again_under_its_name_once():
    """Optuna writes CREATE_STUDY again for every create_study(load_if_exists=True) of a live name,
    which creates nothing: counted as new studies, a dropped line that did create one passed."""
    from longrope.runs.repair import refuse_unsafe_drop
    from longrope.spaces import UserError

    lines = _journal({"op_code": 0, "study_name": "long-256"}, {"op_code": 0, "study_name": "long-256"},
                     b'{"op_code": 0, "study_name": "sho\x00', {"op_code": 2, "study_id": 1, "user_attr": {}})
    with pytest.raises(UserError, match="^journal line 3 cannot be dropped: the records after it name study 1"):
        refuse_unsafe_drop([3], lines)
    refuse_unsafe_drop([3], lines[:3])  # nothing names it: dropped without a word


def test_a_record_missing_any_key_is_either_replayed_the_same_or_damaged(tmp_path):
    """Every key of every record Optuna writes (each op_code; WAITING, RUNNING and finished trials,
    from a template or set later), deleted in turn: the line is damaged, or Optuna's replay of the
    journal is what it was (no KeyError, no trial read in another state or without its attributes)."""
    import optuna
    from optuna.trial import TrialState as S

    journal = tmp_path / "journal.log"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    optuna.create_study(study_name="gone", storage=storage)
    optuna.delete_study(study_name="gone", storage=storage)
    study = optuna.create_study(study_name="s", storage=storage)
    study.set_user_attr("u", 1)
    storage.set_study_system_attr(study._study_id, "k", 2)
    x = optuna.distributions.FloatDistribution(0, 1)
    for state, values in ((S.COMPLETE, [0.5]), (S.PRUNED, None), (S.FAIL, None)):
        study.add_trial(optuna.trial.create_trial(state=state, values=values, params={"x": 0.2},
                                                  distributions={"x": x}, intermediate_values={0: 1.0}))
    study.enqueue_trial({"x": 0.3}, user_attrs={"slot": 1})
    study.enqueue_trial({"x": 0.4})
    for tell in (S.COMPLETE, S.PRUNED, None):  # the queued two set RUNNING, then a new one
        trial = study.ask()
        trial.suggest_float("x", 0, 1), trial.report(0.7, 0), trial.set_user_attr("a", 1)
        storage.set_trial_system_attr(trial._trial_id, "b", 2)
        if tell:
            study.tell(trial, 0.6 if tell == S.COMPLETE else None, state=tell)

    def replay():
        s = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        return [(f.study_name, f.user_attrs, f.system_attrs, s.get_all_trials(f._study_id))
                for f in s.get_all_studies()]

    lines, want = journal.read_text().splitlines(), replay()
    assert sorted({json.loads(ln)["op_code"] for ln in lines}) == list(range(10))
    assert not Run(tmp_path).unreadable_lines()
    for at, line in enumerate(lines):
        for key in json.loads(line):
            rec = json.loads(line)
            del rec[key]
            journal.write_text("\n".join(lines[:at] + [json.dumps(rec)] + lines[at + 1:]) + "\n")
            if Run(tmp_path).unreadable_lines() != [at + 1]:
                assert replay() == want, (key, line)


@pytest.mark.parametrize("garbage", [b"\xc3( disk garbage\xff\n", b'{"op_code": 6, "\x80\xa0": 1}\n'])
def test_a_whole_last_line_that_is_not_utf8_is_damage_not_a_torn_line(tmp_path, cfg_file, capsys, garbage):
    """A last line ending in its newline but not UTF-8 was taken for a torn one, which Optuna's
    replay skips: it raised UnicodeDecodeError there (status, resume) and in repair_journal."""
    run_dir = tmp_path / "run"
    assert main(["search", str(cfg_file), "--run-dir", str(run_dir), "--quiet", "--max-evals", "12"]) == 0
    journal = run_dir / "journal.log"
    n = len(journal.read_bytes().splitlines()) + 1
    journal.write_bytes(journal.read_bytes() + garbage)
    before = snapshot(run_dir)
    for argv in (["status", str(run_dir)], ["resume", str(run_dir), "--quiet"]):
        one_line(capsys, main(argv), f"line {n} is not a journal record")
    assert Run.open(run_dir).repair_journal() is None and snapshot(run_dir) == before  # left to --repair
    assert main(["resume", str(run_dir), "--quiet", "--repair"]) == 0
    assert f"dropped 1 unreadable journal line(s) ({n})" in capsys.readouterr().err
    [backup] = run_dir.glob("journal.log.bak-*")
    assert backup.read_bytes().endswith(garbage) and not journal.read_bytes().endswith(garbage)
    assert main(["status", str(run_dir)]) == 0
    journal.write_bytes(journal.read_bytes() + garbage[:-1])  # torn mid-write: repair_journal's still
    assert not Run.open(run_dir).unreadable_lines() and Run.open(run_dir).repair_journal()
