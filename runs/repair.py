"""`resume --repair`: which unreadable journal lines can be dropped without a word. Optuna's
journal is an append-only log of operations; a line dropped from it must neither renumber the
studies and trials after it nor strip a finished trial of one of its records."""

from __future__ import annotations

import json
from pathlib import Path

from longrope.spaces import UserError

from .optuna_io import trial_id

# The keys Optuna's journal replay reads from a record of each op_code whatever it holds (optuna/
# storages/journal/_storage.py, JournalOperation 0-9): a line that lacks one is as damaged as one
# that is not JSON (a bit flipped in a key: KeyError or "Should not reach" from inside Optuna).
RECORD_KEYS = {0: ("study_name", "directions"), 1: ("study_id",), 2: ("study_id", "user_attr"),
               3: ("study_id", "system_attr"), 4: ("study_id", "datetime_start"),
               5: ("trial_id", "param_name", "param_value_internal", "distribution"),
               6: ("trial_id", "state", "values"), 7: ("trial_id", "step", "intermediate_value"),
               8: ("trial_id", "user_attr"), 9: ("trial_id", "system_attr")}
# A CREATE_TRIAL from a template (enqueue_trial, add_trial) holds all of these; the replay reads
# them with defaults (a WAITING trial without its "state" is replayed RUNNING, one without its
# "user_attrs" without them), so a template record lacking one is damaged too.
TEMPLATE_KEYS = ("state", "value", "values", "distributions", "params", "user_attrs", "system_attrs",
                 "intermediate_values")
RUNNING, WAITING, FINISHED = 0, 4, (1, 2, 3)  # TrialState's values: COMPLETE, PRUNED, FAIL finished


def is_record(rec: object) -> bool:
    """Whether a journal line's JSON holds every key Optuna's replay reads from it: its op_code's
    (RECORD_KEYS), and those that its content calls for: a trial set RUNNING is read its
    datetime_start and a finished one its datetime_complete (_apply_set_trial_state_values), a
    template's finished trial its datetime_complete and each parameter's distribution
    (_apply_create_trial). A state that is no TrialState is a ValueError there."""
    op = rec.get("op_code") if isinstance(rec, dict) else None
    keys = RECORD_KEYS.get(op) if type(op) is int else None
    if keys is None or not all(k in rec for k in ("worker_id", *keys)):
        return False
    template = op == 4 and any(k in rec for k in TEMPLATE_KEYS)
    if template and not all(k in rec for k in TEMPLATE_KEYS):
        return False
    if op != 6 and not template:
        return True
    state = rec["state"]
    if type(state) is not int or not RUNNING <= state <= WAITING:
        return False
    if state in FINISHED and "datetime_complete" not in rec:
        return False
    if op == 6:
        return state != RUNNING or "datetime_start" in rec
    params, dists = rec["params"], rec["distributions"]
    return isinstance(params, dict) and isinstance(dists, dict) and set(params) <= set(dists)


def refuse_unsafe_drop(bad: list[int], lines: list[bytes]) -> None:
    """Raise UserError (nothing changed) when dropping the 1-based lines `bad` would change what
    the rest of the journal means."""
    _refuse_lost_records(bad, lines, *_refuse_renumbering(bad, lines))


def _refuse_renumbering(bad: list[int], lines: list[bytes]) -> tuple[dict[int, int], dict[int, int]]:
    """Optuna's journal numbers studies and trials by their creation records (JournalStorage's
    _apply_create_trial: trial_id = trials so far); every other record names its id. Dropping a
    line that created one would renumber the rest: each later trial would take its
    predecessor's parameters and results. Such a line shows as a record, after it, that names
    an id not created yet; then nothing is dropped. Returns each trial id's line of creation and
    of its end, the ids as Optuna gives them to the journal without the dropped lines."""
    live: dict[str, int] = {}  # study name -> id, as _apply_create_study / _apply_delete_study keep them
    created: dict[int, int] = {}  # trial id -> line of its CREATE_TRIAL
    finished: dict[int, int] = {}  # trial id -> line of its end (COMPLETE, PRUNED, FAIL)
    studies = trials = 0
    drop = set(bad)
    for n, line in enumerate(lines, start=1):
        if n in drop or not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # a torn last line: repair_journal's
        op, study, trial = rec.get("op_code"), rec.get("study_id"), rec.get("trial_id")
        if op == 0:  # CREATE_STUDY: a live name created again is the same study
            if rec.get("study_name") not in live:
                live[rec.get("study_name")], studies = studies, studies + 1
            continue
        if op == 1:  # DELETE_STUDY: its name may be created afresh, under a new id
            live = {k: v for k, v in live.items() if v != study}
        if op == 4:  # CREATE_TRIAL, counted only in a live study (_apply_create_trial skips the others)
            if isinstance(study, int) and study in live.values():
                created[trials], trials = n, trials + 1
            continue
        if op == 6 and rec.get("state") in FINISHED:  # SET_TRIAL_STATE_VALUES
            finished.setdefault(trial, n)
        kind, ident, known = (("trial", trial, trials) if isinstance(trial, int)
                              else ("study", study, studies))
        if isinstance(ident, int) and ident >= known:
            lost = max(b for b in bad if b < n) if any(b < n for b in bad) else bad[0]
            raise UserError(f"journal line {lost} cannot be dropped: the records after it name {kind} "
                            f"{ident} before the journal creates it, so that line created a {kind}, and "
                            "without it every later one would take another's results; restore the journal "
                            "from a copy or start a new --run-dir (nothing was changed)")
    return created, finished


def _refuse_lost_records(bad: list[int], lines: list[bytes], created: dict[int, int],
                         finished: dict[int, int]) -> None:
    """A dropped line that was a trial's result leaves it RUNNING, re-run on resume; one that was
    a parameter, its slot or a score it recorded (doc_nll) leaves a finished trial without it: a
    KeyError on every resume, or a search that silently differs. So each finished trial whose
    records span a dropped line must still have what its finished siblings have (a stray line
    written into the journal is dropped; a record torn out of it is refused)."""
    import tempfile

    import optuna

    spanning = {t for t, c in created.items() if any(c < b < finished.get(t, 0) for b in bad)}
    if not spanning:
        return
    drop = set(bad)
    with tempfile.TemporaryDirectory() as tmp:  # the journal as it would be, replayed by Optuna
        kept = Path(tmp) / "journal.log"
        kept.write_bytes(b"\n".join(ln for n, ln in enumerate(lines, start=1) if n not in drop))
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(kept)))
        for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
            for t in done:
                if trial_id(t) not in spanning:
                    continue
                why = _lacks(t, [u for u in done if u is not t])
                if why:
                    line = min(b for b in bad if created[trial_id(t)] < b < finished[trial_id(t)])
                    raise UserError(f"journal line {line} lies among the records of trial {t.number} of "
                                    f"{summary.study_name}, finished after it, {why}: dropping it could "
                                    "change that result without a word; restore the journal from a copy or "
                                    "start a new --run-dir (nothing was changed)")


def _lacks(trial, others: list) -> str | None:
    """Why `trial` may have lost a record: a parameter the stage's other finished trials have (it
    searches the same ones in each), a user or system attribute every other finished trial of its
    state has; or no other trial of its state to compare with (an interruption leaves one re-queued
    FAIL, and its re-queue mark could not be missed)."""
    params = set().union(*(u.params for u in others)) - set(trial.params)
    if params:
        return f"which lacks parameter {sorted(params)[0]} without it"
    same = [u for u in others if u.state == trial.state]
    if not same:
        return f"the only {trial.state.name} trial of its study, with no other to check its records against"
    for what, get in (("attribute", lambda u: u.user_attrs), ("system attribute", lambda u: u.system_attrs)):
        missing = set.intersection(*(set(get(u)) for u in same)) - set(get(trial))
        if missing:
            return f"which lacks {what} {sorted(missing)[0]} without it"
    return None
