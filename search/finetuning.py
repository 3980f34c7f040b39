"""The fine-tune stage inside a run: LongRoPE's progressive extension (section 3.3).

After a long stage whose length is in ``finetune.after``, the model is fine-tuned at that length
with the stage's best factors (objectives/finetune.py) and merged into
``RUN/models/ft-<L>/``: weights, tokenizer, and a config.json carrying the factors (the same
form as `longrope apply`). The later stages, the short ones included, then search on that
folder; the best files name it as their model.

Resume: a finished fine-tune (its folder renamed into place last) is not run again; a killed
one continues from ``RUN/finetune/ft-<L>/checkpoint.pt``. The scoring workers are closed
first, so the fine-tune has the GPUs (or cores) to itself; on Ray it runs as one task with the
workers' resources.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from longrope.objectives.finetune import CHECKPOINT, PROGRESS, check_targets, finetune
from longrope.objectives.specs import FinetuneSpec, ObjectiveSpec
from longrope.objectives.workers import on_ray_worker
from longrope.runs import BestRecord, Run
from longrope.runs.export import apply_to_folder, hf_config_patch
from longrope.spaces import UserError
from longrope.spaces.files import atomic_write_text

from .schema import WorkersConfig

TRAINED_WITH = "trained_with.json"  # the best record a fine-tune started with (finetune/ft-<L>/)

RETRIES = 3  # times Ray re-runs a fine-tune whose worker was lost (each from its checkpoint)
CANCEL_WAIT = 30.0  # seconds an interrupted driver waits for its cancelled fine-tune task to end


def check_finetune(spec: ObjectiveSpec, ft: FinetuneSpec) -> None:
    """Refuse before the run starts what cannot fine-tune."""
    if not ft.after:
        return
    if spec.model.path.startswith("synthetic"):
        raise UserError("finetune.after: the synthetic objective has no weights to fine-tune; use a "
                        "transformers model or set finetune.after = []")
    try:
        import peft  # noqa: F401
    except ImportError:
        raise UserError("finetune.after needs peft (pip install peft)") from None
    check_targets(spec, ft)


def finetune_stage(run: Run, spec: ObjectiveSpec, ft: FinetuneSpec, workers: WorkersConfig, length: int,
                   progress: bool = True, check=None) -> str:
    """Fine-tune `spec`'s model after stage long-`length` (its best file holds the factors);
    returns the merged model's folder. Already done: returns it at once. `check()` (the driver's
    lease ticket, runs/lease.py) runs before each training step's writes and before the merged
    model's: a driver taken over meanwhile stops there, here or on a Ray node."""
    final = run.model_dir(length).absolute()  # the later stages' model, named in their best files
    if (final / "config.json").is_file():  # done; a kill after the rename below left the merge
        shutil.rmtree(run.finetune_dir(length) / "merged", ignore_errors=True)
        _warn_if_outdated(run, final, length)
        return str(final)
    best = run.best("long", length)
    if best is None:
        raise UserError(f"finetune after long-{length}: the stage has no best factors to train with")
    work = run.finetune_dir(length).absolute()  # a Ray node resolves a relative path in its own folder
    work.mkdir(parents=True, exist_ok=True)
    resumed = (work / CHECKPOINT).exists()
    if check is not None:  # before the first write to the run
        check()
    best = _trained_with(run, work, best, resumed, length)
    s2 = f"G={ft.group(length)}" if ft.s2_attn else "off"
    how = f"resume{_from_step(work)}" if resumed else "start"
    run.event(f"finetune-{length}: {how} on {spec.model.path}, "
              f"{ft.steps} steps, LoRA r={ft.lora_rank}, S2-Attn {s2}")
    args = (spec, ft, best.factors, length, work, work / "merged")
    home = run.path.absolute()
    record = (_on_ray(workers, *args, check=check, home=home) if workers.backend == "ray" else
              _here(*args, progress=progress, check=check, home=home))
    if check is not None:
        check()
    patch = work / "factors.json"  # the stage's factors in export form, for the merged config
    atomic_write_text(patch, json.dumps(hf_config_patch(best, None), indent=1) + "\n")
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)  # a copy killed half-way
    apply_to_folder(patch, work / "merged", tmp, copy=True, quiet=True)
    tmp.rename(final)  # last: the folder exists only whole
    shutil.rmtree(work / "merged")
    run.event(f"finetune-{length}: done, loss {record['final_loss']:.4f} (last 10 steps at L), "
              f"{record['train_seconds']:.0f} s training; model {final}")
    return str(final)


def _trained_with(run: Run, work: Path, best: BestRecord, resumed: bool, length: int) -> BestRecord:
    """The best record the fine-tune trains with, kept beside its checkpoint: a resume with a
    larger budget may have moved long-`length`'s best meanwhile, and the checkpoint (trained with
    the old factors) was then refused as another fine-tune's. It goes on with the factors it
    started with, saying so, as a finished fine-tune keeps its model (_warn_if_outdated)."""
    path = work / TRAINED_WITH
    if resumed and path.is_file():
        kept = BestRecord.load(path)
        if kept.factors != best.factors:  # RescaleFactors' exact equality: λ, n̂ and mscale
            print(f"warning: finetune-{length} goes on with the factors it started with; long-{length}'s "
                  "best has changed since (a resume with a larger budget?), and the later stages search "
                  f"the model trained with the old ones; to train with the new best, delete {work}",
                  file=sys.stderr)
        return kept
    atomic_write_text(path, best.to_json())
    return best


def _from_step(work: Path) -> str:
    """' from step N', the checkpoint a resumed fine-tune continues from (progress.json says)."""
    try:
        step = json.loads((work / PROGRESS).read_text()).get("checkpoint_step")
    except (OSError, ValueError, AttributeError):
        return ""
    return f" from step {step}" if isinstance(step, int) else ""


def _ray_task(train):
    """`train` (finetune) as a Ray task's body: on the CPU when it holds no GPU
    (workers.on_ray_worker says why). A closure, so Ray ships the function it holds by value
    where it is no module's (a test's stand-in), and by reference where it is finetune."""

    def task(spec: ObjectiveSpec, *args, **kw):
        return train(on_ray_worker(spec), *args, **kw)

    return task


def _here(*args, progress: bool, check=None, home=None):
    return finetune(*args, progress=progress, check=check, home=home)


def _on_ray(workers: WorkersConfig, *args, check=None, home=None):
    """One Ray task with a scoring worker's resources. Its worker lost (killed, out of memory, its
    node gone): Ray runs it again, up to RETRIES times, from its last checkpoint (the run folder is
    shared), so the result does not change; past that, one line, and a resume continues from
    there. A user error inside is re-raised here; Ctrl-C cancels the task (its checkpoint stays)."""
    import ray

    from .cluster import DeviceFault, death_reason, init_ray, ray_get

    init_ray(workers.address)
    lost = (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.OutOfMemoryError,
            ray.exceptions.ObjectLostError)  # what Ray raises for a lost worker, not for a bug
    task = ray.remote(num_gpus=workers.num_gpus, num_cpus=workers.num_cpus, max_retries=RETRIES)(
        _ray_task(finetune)).options(name="finetune")  # its name in `ray list tasks`: ray::finetune
    ref = task.remote(*args, progress=False, check=check, home=home)
    try:
        return ray_get(ref)
    except KeyboardInterrupt:
        _cancel(ray, ref)
        raise
    except DeviceFault as e:  # a CUDA error: the worker's context is broken, the checkpoint on disk is not
        raise UserError(f"the fine-tune's GPU failed ({death_reason(e)}); `longrope resume` "
                        "continues it from its last checkpoint") from None
    except lost as e:
        why = str(e).strip().splitlines()[0][:200]
        raise UserError(f"the fine-tune's Ray worker was lost {RETRIES + 1} times ({type(e).__name__}: "
                        f"{why}); `longrope resume` continues it from its last checkpoint") from None


def _cancel(ray, ref, wait: float = CANCEL_WAIT) -> None:
    """Stop the fine-tune task and wait until it has ended. ray.cancel only asks its worker to
    exit: a driver that went on to release the lease and shut Ray down left the task training (it
    raised LeaseLost at its next step), and once (in CI) the driver, exiting with the task's end
    still pending, died in Ray's core (exit 1, not 143). A second signal meanwhile is not obeyed
    (stopping.py), so the wait is bounded."""
    ray.cancel(ref, force=True)
    done, _ = ray.wait([ref], timeout=wait)
    if not done:
        print(f"note: the fine-tune task did not stop within {wait:g} s of its cancel; its checkpoint "
              "stays, and a resume continues from it", file=sys.stderr)


def _warn_if_outdated(run: Run, final: Path, length: int) -> None:
    """A fine-tune is done once; a later driver with a larger budget may have moved long-`length`'s
    best since, and the later stages would search a model trained with the old factors unsaid."""
    try:
        best = run.best("long", length)
        rope = json.loads((final / "config.json").read_text()).get("rope_scaling") or {}
    except (UserError, OSError, ValueError, AttributeError):  # nothing to compare with
        return
    trained = rope.get("long_factor")
    if best is not None and trained is not None and list(trained) != list(best.lambdas):
        print(f"warning: {final} was fine-tuned with the factors long-{length} had then; its best has "
              "changed since (a resume with a larger budget?), and the later stages search that model as "
              f"it is; to train it again with the new best, delete {final} and {run.finetune_dir(length)}",
              file=sys.stderr)
