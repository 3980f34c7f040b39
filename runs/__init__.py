"""Where results live: the run directory, its journal, resume, best factors, export.

A run directory holds exactly this (a test checks it)::

    <run-dir>/
      config.toml          frozen copy of the run's resolved config; resume refuses a
                           change to anything that defines the search
      journal.log          Optuna JournalStorage: every trial of every stage
      best/long-<L>.json   best factors per long target, rewritten atomically
      best/short-<L>.json  best short-context factors
      export/              what `longrope export` wrote
      run.lock             one driver per run (pid and host); removed on exit
      events.log           human-readable progress, one line per generation

`optuna-dashboard <run-dir>/journal.log` opens the run in Optuna's dashboard.

`Run` (rundir) opens, creates and locks a run and loads its studies and best records;
`BestRecord` (best) is one best/*.json; `vocab` names every key the search keeps in
Optuna storage; `optuna_io` is the one place that uses Optuna's private API.
"""

from .best import BestRecord
from .rundir import Run, atomic_write_text

__all__ = ["BestRecord", "Run", "atomic_write_text"]
