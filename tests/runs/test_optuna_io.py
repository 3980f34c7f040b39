"""The Optuna adapter: every private-API use works on this Optuna, and lives in one module."""

import re
from pathlib import Path

import optuna
from optuna.trial import TrialState

from longrope.runs import optuna_io
from longrope.runs.vocab import PARENTS_PREFIX, parents_key

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("spaces", "objectives", "search", "runs")
PRIVATE = re.compile(r"\._(storage|trial_id|study_id)\b")


def test_system_attrs_trial_state_and_ids_through_the_adapter():
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    trial = study.ask()  # RUNNING, as a dead driver leaves it
    optuna_io.set_study_system_attr(study, "k", [1, 2])
    optuna_io.set_trial_system_attr(study, trial, "slot", [0, 3])
    assert optuna_io.study_system_attrs(study) == {"k": [1, 2]}
    frozen = optuna_io.frozen_trial(study, trial)
    assert frozen.state == TrialState.RUNNING and frozen.system_attrs == {"slot": [0, 3]}
    assert optuna_io.trial_id(frozen) == optuna_io.trial_id(trial)
    optuna_io.fail_trial(study, frozen)
    assert study.trials[0].state == TrialState.FAIL and study.trials[0].system_attrs == {"slot": [0, 3]}


def test_parents_key_keeps_its_on_disk_form():
    assert parents_key(3) == "longrope_parents_0003" and parents_key(12).startswith(PARENTS_PREFIX)


def test_no_module_outside_the_adapter_touches_optuna_private_attributes():
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "runs" / "optuna_io.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if PRIVATE.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "use longrope.runs.optuna_io instead:\n" + "\n".join(offenders)
    assert PRIVATE.search((ROOT / "runs" / "optuna_io.py").read_text())  # the scan would see a use
