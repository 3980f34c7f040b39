"""The only module that touches Optuna's private attributes.

Optuna has no public API for some of what a resumable search needs:
- setting a study's or a trial's *system* attrs (``Study.set_system_attr`` and
  ``Trial.set_system_attr`` were deprecated in 3.1 and are gone in 5.0); the
  sampler keeps a trial's slot and a generation's parents there, apart from the
  user's own attrs;
- reading a study's system attrs (``Study.system_attrs``: same story);
- reading a trial's stored system attrs while it is RUNNING (the live
  ``optuna.Trial`` lost ``system_attrs`` in 5.0);
- failing a trial left RUNNING by a dead process without side effects:
  ``study.tell(number, state=FAIL)`` would also run this process's sampler's
  ``after_trial`` hook on a trial it never sampled, so the driver writes the
  state to storage directly, as it always has.

Each use goes through the storage: ``study._storage``, ``study._study_id`` and
``trial._trial_id`` (both ``optuna.Trial`` and ``FrozenTrial`` carry it) with the
public ``BaseStorage`` methods. Checked against Optuna 4.0.0 and 5.0.0 (the
project requires optuna>=4.0); tests/runs/test_optuna_io.py exercises every
function, and a test checks no other module of ours uses these attributes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    Trial = optuna.Trial | FrozenTrial


def trial_id(trial: Trial) -> int:
    """The storage's id of a trial: unique across the studies of one storage (unlike number)."""
    return trial._trial_id


def study_system_attrs(study: optuna.Study) -> dict[str, Any]:
    return study._storage.get_study_system_attrs(study._study_id)


def set_study_system_attr(study: optuna.Study, key: str, value: Any) -> None:
    study._storage.set_study_system_attr(study._study_id, key, value)


def set_trial_system_attr(study: optuna.Study, trial: Trial, key: str, value: Any) -> None:
    study._storage.set_trial_system_attr(trial_id(trial), key, value)


def frozen_trial(study: optuna.Study, trial: Trial) -> FrozenTrial:
    """The trial as stored now (system attrs included), also while it is RUNNING."""
    return study._storage.get_trial(trial_id(trial))


def fail_trial(study: optuna.Study, trial: Trial) -> None:
    """Mark a RUNNING trial FAIL, also one asked by another (dead) process, or a WAITING one
    taken out of the queue."""
    from optuna.trial import TrialState

    study._storage.set_trial_state_values(trial_id(trial), TrialState.FAIL)
