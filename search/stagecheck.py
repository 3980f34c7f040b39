"""What each stage records of what it scores, and a resumed stage checks: its documents (or
needle samples), the dtype its candidates are scored in, and the previous stage's best its
seeds began with. Each is a pure function of the
config on the machine it ran on; data edited under the run, or a resume on another kind of
machine, would otherwise rank new scores against old ones without a word. And what a stage
writes of its result: its best file (best_record), with the held-out score it cached."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from longrope.objectives.models import fingerprint
from longrope.runs import BestRecord, Run, vocab
from longrope.spaces import RescaleFactors, RopeGeometry, UserError

from .config import RunConfig, defining_diff
from .stages import Stage


def task_records(backend, length: int, pool: str) -> list[dict] | None:
    """What the backend's task scores at `length` in `pool`; None from a backend without a task."""
    return backend.task_records(length, pool) if hasattr(backend, "task_records") else None


def check_samples(backend, cfg: RunConfig, stage: Stage, study: optuna.Study) -> None:
    """Record what the task scores (the needle samples, or the documents' hashes), or check a
    resumed stage scores the same: they are a pure function of the config, but an edited data
    file, a new dataset revision or another tokenizer would silently change them."""
    records = task_records(backend, stage.length, "search")
    if records is None:  # the synthetic objective: no documents
        return
    needle = cfg.objective.kind == "needle"
    key, what = (vocab.SAMPLES, "needle samples") if needle else (vocab.DOCUMENTS, "search documents")
    stored = study.user_attrs.get(key)
    if stored and needle and "sha256" not in stored[0]:  # recorded before samples had their hash
        records = [{k: v for k, v in r.items() if k != "sha256"} for r in records]
    if stored is None:
        study.set_user_attr(key, records)
    elif stored != records:
        raise UserError(f"{stage.name}: the {what} differ from the ones this run scored (an edited "
                        "data file, a new dataset revision, another tokenizer?); resume with the same "
                        "model and data, or start a new --run-dir")


def check_stage(backend, cfg: RunConfig, run: Run, stage: Stage, study: optuna.Study) -> None:
    """As a stage starts or resumes: what it scores and the dtype it scores in are checked (or
    recorded), and the config it starts under is kept (runs made before that: on resume)."""
    check_samples(backend, cfg, stage, study)
    check_precision(backend, cfg, run, stage, study)
    if vocab.CONFIG not in study.user_attrs:
        study.set_user_attr(vocab.CONFIG, cfg.to_dict())
    check_weights(backend, cfg, stage, study)


def check_weights(backend, cfg: RunConfig, stage: Stage, study: optuna.Study) -> None:
    """Record the fingerprint of model.path's weights, or check a resumed stage's are the same
    (weights replaced under the run's path). Taken where the driver sees the path, else from a
    Ray worker (a head node that mounts no model); nothing where neither sees it."""
    fp = weights_fingerprint(backend, cfg.model.path)
    stored = study.user_attrs.get(vocab.MODEL)
    if fp is not None and stored is None:
        study.set_user_attr(vocab.MODEL, fp)
    same_weights(cfg.model.path, fp, {stored} - {None}, stage.name)


def weights_fingerprint(backend, path: str) -> str | None:
    """models.fingerprint(path) where the driver sees the path, else a Ray worker's."""
    fp = fingerprint(path)
    if fp is None and hasattr(backend, "fingerprint") and not path.startswith(("builtin:", "synthetic")):
        fp = backend.fingerprint(path)
    return fp


def same_weights(path: str, got: str | None, recorded: set[str], searched_on: str) -> None:
    """Refuse weights at `path` (fingerprint `got`) other than those the run `recorded`; nothing
    to check where either is unknown."""
    if got is not None and recorded and recorded != {got}:
        raise UserError(f"model.path {path} holds other weights than {searched_on} was searched on "
                        "(config.json, or a weight file's name, size or ends, differ): a run keeps its "
                        "model; give a copy of it, or start a new --run-dir")


def recorded_diff(run: Run, cfg: RunConfig, studies: list[optuna.Study]) -> list[str]:
    """Search-defining keys of `cfg` unlike those a stage of `run` recorded as it started. The
    run's config.toml is checked first, but it is a file a user edits (model.dtype, a moved
    search.storage): a step or a seed changed there was taken as the run's own, and the resumed
    search mixed two grids or two random streams without a word. search.storage may move."""
    for study in studies:
        stored = study.user_attrs.get(vocab.CONFIG)
        diff = [] if stored is None else [d for d in defining_diff(stored, cfg.to_dict())
                                          if not d.startswith("search.storage:")]
        if diff:
            return [f"{diff[0]} (as {study.study_name} recorded it in the journal; was "
                    f"{run.path / 'config.toml'} edited?)"]
    return []


def moved_model(run: Run, cfg: RunConfig, studies: list[optuna.Study], recorded: set[str],
                got: str | None) -> str | None:
    """The run's model.path when `cfg` names a moved copy of it: model.path (and a tokenizer at
    the model's path) is all that differs from what the run recorded, and the new path holds
    the weights whose fingerprint (`recorded`) its stages recorded as they started; `got` is the
    new path's, None where the driver does not see it (then Ray workers check it). None otherwise."""
    olds = [run.config()] + [s.user_attrs[vocab.CONFIG] for s in studies if vocab.CONFIG in s.user_attrs]
    old = next((p for o in olds if (p := (o.get("model") or {}).get("path")) != cfg.model.path), None)
    moves = ("model.path:", "model.tokenizer:")
    if not recorded or old is None or any(
            not d.startswith(moves) for o in olds for d in defining_diff(o, cfg.to_dict())):
        return None
    same_weights(cfg.model.path, got, recorded, f"the run's model {old}")
    if got is None and cfg.workers.backend != "ray":
        return None  # refused below: the path does not exist for the driver that loads it
    return old


def check_resumable(run: Run, cfg: RunConfig, run_dir: str) -> Callable[[Any], None] | None:
    """A resume's config against the run's (its config.toml, then what each stage recorded): only
    the budget, [workers] and how the model runs may change; a moved storage or model is told
    how to come back rather than only to start over, and a moved copy of the model's weights
    (its fingerprint as recorded) is taken. A copy the driver does not see is checked on a Ray
    worker, and so are the weights at the run's own path: the check returned is run on the backend
    once it is up, before the run is changed."""
    studies = run.studies()  # each call replays the journal: once here
    recorded = {s.user_attrs[vocab.MODEL] for s in studies if vocab.MODEL in s.user_attrs}
    got = fingerprint(cfg.model.path)
    path = cfg.model.path

    def on_workers(searched_on: str) -> Callable[[Any], None] | None:
        """Where the driver does not see the path, the same check on a worker once they are up."""
        if got is not None or not recorded or cfg.workers.backend != "ray":
            return None
        return lambda backend: same_weights(path, weights_fingerprint(backend, path), recorded, searched_on)

    if (old := moved_model(run, cfg, studies, recorded, got)) is not None:
        same = ("the same weights (config.json, and each weight file's size and ends)" if got else
                "not seen here: a Ray worker checks its weights as they load")
        print(f"note: model.path {old} -> {path}: {same}, the run goes on with them", file=sys.stderr)
        return on_workers(f"the run's model {old}")
    same_weights(path, got, recorded, run_dir)  # weights replaced under the run's own path
    diff = defining_diff(run.config(), cfg.to_dict()) or recorded_diff(run, cfg, studies)
    if diff and diff[0].startswith("search.storage:"):  # another storage holds none of its trials
        raise UserError(f"{run_dir} keeps its evaluations in another storage ({diff[0]}): this one "
                        "would start the search over; give the run's own (a database that moved: "
                        f"edit search.storage in {run.path / 'config.toml'}) or a new --run-dir")
    # a copy is checked against the fingerprint its stages recorded (the driver's, or a Ray worker's):
    # none in a run made before session 39 that has not resumed since
    known = bool(recorded)
    way = "resume with --model NEW (or link it at its old path: ln -s NEW OLD)" if known else \
        "link it at its old path (ln -s NEW OLD; the run recorded no fingerprint to check a copy against)"
    moved = f", or, if the model only moved, {way}" if diff and diff[0].startswith("model.path:") else ""
    if diff:
        raise UserError(f"{run_dir} was searched with another {diff[0]}; only the budget "
                        "(search.iterations, max_evals, patience, min_improvement), [workers] and "
                        "model.device, dtype, threads, nll or data.cache_dir may change in a run: "
                        f"start a new --run-dir{moved}")
    # in-process the driver loads it (Ray workers may see paths it does not)
    if cfg.workers.backend == "inprocess" and not path.startswith(("builtin:", "synthetic")) \
            and not Path(path).expanduser().exists():
        way = "resume with --model NEW (or link it there: ln -s NEW OLD)" if known else \
            "link it there (ln -s NEW OLD; the run recorded no fingerprint to check a copy against)"
        raise UserError(f"{run_dir} was searched with model.path {path}, which does not exist now: a "
                        f"run keeps its model; moved, {way.replace('OLD', path)}")
    return on_workers(run_dir)


def heldout_text(backend, stage: Stage) -> str | None:
    """A hash of what the stage's held-out score is taken on (its held-out documents' hashes or
    needle samples), cached with the score: held-out text edited under a run is scored again
    instead of its old score being kept. None for the synthetic objective."""
    records = task_records(backend, stage.length, "heldout")
    if records is None:
        return None
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()[:16]


def cached_heldout(study: optuna.Study, trial: int, text: str | None) -> float | None:
    """The held-out perplexity the stage cached for `trial` (its best when scored) on the held-out
    text `text`, if any (a cache written before it recorded its text is taken as it is)."""
    cached = study.user_attrs.get(vocab.HELDOUT) or {}
    if cached.get("trial") != trial or cached.get("text", text) != text:
        return None
    return cached["ppl"]


def check_precision(backend, cfg: RunConfig, run: Run, stage: Stage, study: optuna.Study) -> None:
    """Record the dtype the stage is scored in, or check a resumed stage is scored in the same:
    model.dtype = auto resolves per device (float32 on a CPU, bfloat16 on an A100, float16 on a
    V100), so a run resumed elsewhere would rank bf16 scores against fp32 ones. An explicit
    model.dtype may change in a run for that reason: what it resolves to is what must match."""
    got = getattr(backend, "precision", lambda: None)()
    if got is None:  # the synthetic objective: no model
        return
    stored = study.user_attrs.get(vocab.DTYPE)
    if stored is None:
        study.set_user_attr(vocab.DTYPE, got)
    elif stored != got:
        dtype = cfg.model.dtype
        why = "model.dtype = 'auto' on their device" if dtype == "auto" else f"model.dtype = '{dtype}'"
        w = cfg.workers
        cpu = (" (on the CPU: workers.num_gpus = 0 on Ray; set it to 1, or a share of one, if the stage "
               "ran on GPUs)") if w.backend == "ray" and w.num_gpus == 0 and got == "float32" else ""
        raise UserError(f"{stage.name} was scored in {stored} so far, but these workers load the model "
                        f"in {got} ({why}){cpu}: set dtype = '{stored}' under [model] in "
                        f"{run.path / 'config.toml'} and resume, so that its candidates are scored "
                        "alike (or start a new --run-dir)")


def bred_from(run: Run, stage: Stage, study: optuna.Study,
              previous: RescaleFactors | None) -> RescaleFactors | None:
    """The previous stage's best that this long stage's generation 0 is bred from: recorded as the
    stage starts, and kept on resume. A resume that raised the budget can change the previous
    stage's best after this stage began; generation 0, recomputed from the new one, would mix
    two breeds (and a comparison sampler would queue one more seed)."""
    if vocab.BRED_FROM not in study.user_attrs:
        study.set_user_attr(vocab.BRED_FROM, None if previous is None else previous.to_dict())
        return previous
    kept = study.user_attrs[vocab.BRED_FROM]
    was = None if kept is None else RescaleFactors.from_dict(kept)
    if previous is not None and was != previous:  # RescaleFactors' exact equality: λ, n̂ and mscale
        note = (f"{stage.name}: bred from the previous stage's best as it was when this stage "
                "started; that best has changed since (a raised budget): start a new run to breed "
                "from the new one")
        run.event(note)
        print(f"note: {note}", file=sys.stderr)
    return was


def config_hash(run: Run) -> str:
    return hashlib.sha256(run.config_text().encode()).hexdigest()[:16]


def best_record(cfg: RunConfig, run: Run, stage: Stage, g: RopeGeometry, study, trial,
                factors: RescaleFactors, heldout: float | None, model: str) -> BestRecord:
    """The stage's best file; `model`: the one it was searched on (cfg's, or a fine-tune's)."""
    return BestRecord(
        kind=stage.kind, target_length=stage.length, original_length=g.original_length,
        lambdas=factors.lambdas, n_hat=factors.n_hat, mscale=factors.mscale,
        search_ppl=trial.value, heldout_ppl=heldout,
        evals=sum(1 for t in study.get_trials(deepcopy=False)
                  if t.state in (TrialState.COMPLETE, TrialState.PRUNED)),
        trial=trial.number, slot=trial.system_attrs.get(vocab.SLOT),
        config_hash=config_hash(run), model=model, data=cfg.data.path,
        sampler=cfg.search.sampler, seed=cfg.search.seed, rotary_dim=g.rotary_dim, base=g.base,
    )
