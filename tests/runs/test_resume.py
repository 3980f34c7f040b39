"""Kill -9 the driver at random points, resume, and get the uninterrupted result."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from search_helpers import LONGROPE2, cli, small_cfg, trajectory

from longrope.runs import Run
from longrope.search import config
from longrope.search.driver import Driver


def reference_run(tmp_path, **kw):
    cfg, text = small_cfg(**kw)
    run = Run.create(tmp_path / "reference", config.dumps(cfg))
    Driver(cfg, run, progress=False).run_all()
    return text, trajectory(run), json.loads(run.best_path("long", 256).read_text())


def journal_lines(run_dir) -> int:
    try:
        return (run_dir / "journal.log").read_bytes().count(b"\n")
    except OSError:
        return 0


def wait_for_progress(p, run_dir, lines, timeout=120):
    """Wait until the journal holds `lines` lines (trials under way), or the process ends."""
    end = time.time() + timeout
    while time.time() < end and p.poll() is None and journal_lines(run_dir) < lines:
        time.sleep(0.05)
    if p.poll() is not None:
        raise _Finished()


class _Finished(Exception):
    pass


def kill_and_resume(tmp_path, text, kills, after_lines, extra=(), seed=0):
    """Start, kill -9 once `after_lines` more journal lines exist (an int, or a range to draw
    from), resume, ... `kills` times, then let it finish."""
    cfg_path = tmp_path / "run.toml"
    cfg_path.write_text(text)
    run_dir = tmp_path / "killed"
    rng = np.random.default_rng(seed)
    done_kills = 0
    for i in range(kills + 20):
        args = ("search", str(cfg_path), "--run-dir", str(run_dir), "--quiet", *extra) if i == 0 else \
            ("resume", str(run_dir), "--quiet", *extra)
        p = cli(*args)
        if done_kills < kills:
            try:
                lines = after_lines if isinstance(after_lines, int) else int(rng.integers(*after_lines))
                wait_for_progress(p, run_dir, journal_lines(run_dir) + lines)
                raise subprocess.TimeoutExpired(p.args, 0)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                p.wait()
                done_kills += 1
                continue
            except _Finished:
                pass
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        if "done:" in out:
            return Run.open(run_dir), done_kills
    raise AssertionError("never finished")


def test_repeated_kill_9_resume_equals_uninterrupted(tmp_path):
    text, ref, ref_best = reference_run(tmp_path, model="synthetic:0.004", short="[32]", iterations=6)
    # each kill lands a random number of journal lines into the (re)started run, i.e. mid-search,
    # whatever the machine's start-up time
    run, kills = kill_and_resume(tmp_path, text, kills=5, after_lines=(5, 80))
    assert kills >= 3
    got = trajectory(run)
    assert got == ref
    for rows in got.values():  # no slot evaluated twice
        slots = [r[0] for r in rows]
        assert len(slots) == len(set(slots))
    best = json.loads(run.best_path("long", 256).read_text())
    assert best["lambdas"] == ref_best["lambdas"] and best["n_hat"] == ref_best["n_hat"]
    # the whole best file but the Optuna trial number (re-queued copies shift it), and the export
    assert {**best, "trial": None} == {**ref_best, "trial": None}
    from longrope.runs.export import export

    reference = Run.open(tmp_path / "reference")
    assert export(run)[0].read_text() == export(reference)[0].read_text()
    assert "re-queued" in (run.path / "events.log").read_text()
    assert not (run.path / "run.lock").exists()


def test_kill_9_resume_with_critical_dim_and_searched_mscale_equals_uninterrupted(tmp_path):
    text, ref, ref_best = reference_run(tmp_path, model="synthetic:0.004", short="[32]", iterations=4,
                                        space=LONGROPE2)
    run, kills = kill_and_resume(tmp_path, text, kills=3, after_lines=(5, 80), seed=2)
    assert kills >= 2
    got = trajectory(run)
    assert got == ref and all(dict(r[1])["mscale"] for r in got["long-256"])
    best = json.loads(run.best_path("long", 256).read_text())
    assert (best["lambdas"], best["n_hat"], best["mscale"]) == (ref_best["lambdas"], ref_best["n_hat"],
                                                                ref_best["mscale"])


def test_kill_9_with_ray_backend_resumes_exactly(tmp_path):
    text, ref, _ = reference_run(tmp_path, model="synthetic:0.004", iterations=3)
    run, kills = kill_and_resume(tmp_path, text, kills=1, extra=("--workers", "2"), after_lines=60)
    assert kills == 1 and trajectory(run) == ref


def scored(run) -> list:
    """Per stage, the candidates scored and their results, in no order (trial numbers and draws
    aside: a re-queued copy takes a new number)."""
    from longrope.runs.vocab import REQUEUED

    return [sorted((tuple(sorted(t.params.items())), t.state.name, t.value) for t in study.get_trials()
                   if not t.system_attrs.get(REQUEUED)) for study in run.studies()]


def test_random_search_killed_and_resumed_on_two_ray_workers_equals_uninterrupted_in_process(tmp_path):
    """Random search draws its k-th candidate with the seed (seed, k) (DrawSeeded): kill -9 at
    random points and Ray's workers finishing in any order change nothing it scores. Before,
    each resume re-seeded the stream with (seed, evaluations done): another search."""
    text, _, ref_best = reference_run(tmp_path, model="synthetic:0.004", sampler="random", iterations=4)
    reference = Run.open(tmp_path / "reference")
    run, kills = kill_and_resume(tmp_path, text, kills=3, after_lines=(5, 60), extra=("--workers", "2"),
                                 seed=1)
    assert kills >= 2
    assert scored(run) == scored(reference) and len(scored(run)[0]) == 36  # 12 + 4 × 6
    best = json.loads(run.best_path("long", 256).read_text())  # the config differs in [workers] alone
    assert {**best, "trial": None, "config_hash": None} == {**ref_best, "trial": None, "config_hash": None}


def in_flight(run_dir) -> bool:
    """A trial has been created and not finished (journal ops 4 and 6 with a finished state)."""
    created = finished = 0
    for line in (run_dir / "journal.log").read_text().splitlines():
        try:
            op = json.loads(line)
        except json.JSONDecodeError:
            return False  # a line being written
        created += op["op_code"] == 4
        finished += op["op_code"] == 6 and op.get("state") in (1, 2, 3)
    return created > finished


@pytest.mark.parametrize("sig, code, inherited", [(signal.SIGINT, 130, signal.SIG_DFL),
                                                   (signal.SIGTERM, 143, signal.SIG_DFL),
                                                   (signal.SIGINT, 130, signal.SIG_IGN)])
def test_sigint_and_sigterm_requeue_release_and_resume_exactly(tmp_path, sig, code, inherited):
    """Ctrl-C and SIGTERM (preemption, scancel): the trial in flight is re-queued, the lock
    released, the resume command printed; the resumed run equals an uninterrupted one. A second
    press while the driver stops breaks nothing (it broke into the stop: a second "interrupted").
    SIG_IGN inherited (a script's `search ... &`): SIGINT is obeyed all the same (README)."""
    from longrope.runs import vocab

    text, ref, _ = reference_run(tmp_path, iterations=1)
    # 0.5 s per candidate: the signal lands while one is being scored, not between two
    (tmp_path / "run.toml").write_text(text.replace('path = "synthetic"', 'path = "synthetic:0.1"'))
    run_dir = tmp_path / "r"
    # the child's SIGINT as a terminal's, or as a background shell's `&` leaves it (ignored): the
    # driver's own handler obeys it either way (before it had one, the search ended with 0: the
    # full-suite failure of 510a97f and session 14, an ignored SIGINT inherited from the suite)
    p = cli("search", str(tmp_path / "run.toml"), "--run-dir", str(run_dir), "--quiet",
            preexec_fn=lambda: signal.signal(signal.SIGINT, inherited))
    wait_for_progress(p, run_dir, 40)
    end = time.time() + 60
    while not in_flight(run_dir) and time.time() < end and p.poll() is None:
        time.sleep(0.01)  # send the signal once a trial exists that is not finished
    alive = p.poll() is None
    p.send_signal(sig)
    err = []
    for line in p.stderr:  # pressed again once answered: the stop (workers, Ray's exit) goes on unbroken
        err.append(line)
        if line.startswith("interrupted"):
            p.send_signal(sig)
            break
    err = "".join(err) + p.communicate(timeout=60)[1]
    assert alive, "the search ended before the signal was sent (make the objective slower)"
    events = (run_dir / "events.log").read_text() if (run_dir / "events.log").exists() else ""
    assert p.returncode == code, f"{err}\n--- events.log:\n{events}"
    assert f"longrope resume {run_dir}" in err and "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.startswith("interrupted")]) == 1, err
    assert not (run_dir / "run.lock").exists()
    run = Run.open(run_dir)
    requeued = [t for s in run.studies() for t in s.get_trials(deepcopy=False) if t.system_attrs.get(vocab.REQUEUED)]
    assert requeued, "the trial in flight was not re-queued"
    r = cli("resume", str(run_dir), "--quiet")
    assert r.wait(timeout=300) == 0, r.stderr.read()
    assert trajectory(Run.open(run_dir)) == ref


def ray_started_by(pid: int) -> bool:
    """Whether `pid` has started Ray's own processes (ray.init is under way or done)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            comm, rest = stat.read_text().rsplit(")", 1)
        except OSError:
            continue
        if int(rest.split()[1]) == pid and comm.split("(", 1)[1] in ("gcs_server", "raylet"):
            return True
    return False


def test_sigterm_while_ray_starts_exits_143_and_writes_nothing(tmp_path):
    """Preempted before the search began (ray.init, the workers loading their model): Ray's own
    SIGTERM handler would exit 15 (or 1); the driver's says SIGTERM, exits 143, and leaves no
    half-made run behind."""
    _, text = small_cfg(backend="ray", count=2)
    (tmp_path / "run.toml").write_text(text)
    run_dir = tmp_path / "r"
    p = cli("search", str(tmp_path / "run.toml"), "--run-dir", str(run_dir), "--quiet")
    end = time.time() + 60
    while not ray_started_by(p.pid) and p.poll() is None and time.time() < end:
        time.sleep(0.01)
    assert not run_dir.exists() and p.poll() is None, "the search started before the signal"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err[-3000:]
    assert "interrupted (SIGTERM) while the workers started; nothing of the run was written" in err
    assert "Traceback" not in err and not run_dir.exists()


def test_ray_init_leaves_the_callers_sigterm_handler_in_place():
    """ray.init installs its own SIGTERM handler (sys.exit(15)); after init_ray the driver's is
    back, so a SIGTERM while the workers load their model still exits 143 with its line."""
    script = ("import signal\nfrom longrope.search.cluster import init_ray\n"
              "def mine(signum, frame): pass\n"
              "signal.signal(signal.SIGTERM, mine)\ninit_ray(num_cpus=1)\n"
              "assert signal.getsignal(signal.SIGTERM) is mine, signal.getsignal(signal.SIGTERM)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("torn", [b'{"op_code": 5, "worker', b"\x00\x00garbage"])
def test_torn_last_journal_line_still_resumes(tmp_path, torn):
    text, ref, _ = reference_run(tmp_path, iterations=2)
    cfg, _ = small_cfg(iterations=2)
    run = Run.create(tmp_path / "torn", config.dumps(cfg))
    cfg.search.max_evals = 15
    Driver(cfg, run, progress=False).run_all()
    with open(run.journal, "ab") as f:
        f.write(torn)
    cfg.search.max_evals = 0
    Driver(cfg, run, progress=False).run_all()
    assert trajectory(run) == ref
    assert "torn" in (run.path / "events.log").read_text()


def test_a_trial_written_by_a_driver_that_lost_the_run_is_re_queued(tmp_path, monkeypatch, capsys):
    """A driver frozen inside study.ask, past its lease check, wakes after another took the run
    over and writes one RUNNING trial into its journal. The new holder waited on it forever:
    its stage read done at half its budget, with another best. It is re-queued, and the search
    equals the uninterrupted one; a generation that cannot be completed is an error, not done."""
    from longrope.search.cli import main

    ref = tmp_path / "ref"
    ref.mkdir()
    _, want, _ = reference_run(ref)
    tells, keep = [], Driver.tell

    def stray_after_15(self, study, trial, ev):
        keep(self, study, trial, ev)
        tells.append(1)
        if len(tells) == 15:  # the woken driver's ask: the next slot, with nothing in flight for it here
            st, proposer = self.active
            st.ask(proposer.distributions())

    monkeypatch.setattr(Driver, "tell", stray_after_15)
    cfg, _ = small_cfg()
    run = Run.create(tmp_path / "run", config.dumps(cfg))
    Driver(cfg, run, progress=False).run_all()
    assert trajectory(run) == want
    assert "re-queued 1 trial(s) left running by a driver that had lost the run" in \
        (run.path / "events.log").read_text()

    # a journal that lost a finished trial's slot (as a bad repair left it): an error, not done
    run2 = tmp_path / "run2"
    monkeypatch.undo()
    (tmp_path / "c.toml").write_text(small_cfg()[1])
    assert main(["search", str(tmp_path / "c.toml"), "--run-dir", str(run2), "--quiet", "--max-evals", "15"]) == 0
    lines = (run2 / "journal.log").read_text().splitlines()
    [slot] = [i for i, ln in enumerate(lines) if (r := json.loads(ln))["op_code"] == 9 and r["trial_id"] == 3
              and "longrope_slot" in ln]
    (run2 / "journal.log").write_text("\n".join(lines[:slot] + lines[slot + 1:]) + "\n")
    capsys.readouterr()
    assert main(["resume", str(run2), "--quiet", "--max-evals", "24"]) == 2
    err = capsys.readouterr().err
    assert "error: long-256 cannot go on short of its 24 evaluations: generation 1 waits on generations before it, " \
           "whose 12 slots are held by 11 trials" in err, err
    assert (run2 / "events.log").read_text().count("long-256: done") == 1  # the 15 of the first command


def test_a_driver_that_lost_the_run_asks_its_sampler_nothing_more(tmp_path, monkeypatch):
    """`ready()` may write the early stop into the journal: a driver whose run was taken over
    checks its lease first, and stops without asking."""
    from longrope.runs.lease import LeaseLost
    from longrope.search.proposers import GAProposer

    lost, late, tells = [], [], []
    check, ready, tell = Driver.check_lease, GAProposer.ready, Driver.tell

    def checked(self):
        if lost:
            raise LeaseLost("taken over by node-c")
        check(self)

    def asked(self, study):
        late.extend(lost)
        return ready(self, study)

    def told(self, study, trial, ev):
        tell(self, study, trial, ev)
        tells.append(1)
        if len(tells) == 5:
            lost.append(1)  # node-c took the run over here

    monkeypatch.setattr(Driver, "check_lease", checked)
    monkeypatch.setattr(GAProposer, "ready", asked)
    monkeypatch.setattr(Driver, "tell", told)
    cfg, _ = small_cfg()
    run = Run.create(tmp_path / "run", config.dumps(cfg))
    with pytest.raises(LeaseLost):
        Driver(cfg, run, progress=False).run_all()
    assert lost and not late
