"""The run's vocabulary: every key the search writes into Optuna storage and reads back.

Each value below is on disk in existing journals (and RDB storages): changing
one would make old runs unreadable or resume them wrongly. Add keys; never
rename one.
"""

# -- trial system attrs (written by the search's sampler and driver) -----------------------------
SLOT = "longrope_slot"  # [g, j]: generation g, child j of the evolution; also a user attr of a
#                         re-queued trial, so its copy takes the same slot
REQUEUED = "longrope_requeued"  # True on a trial abandoned by a dead driver (its copy was re-queued);
#                                 such a trial counts for nothing
DRAW = "longrope_draw"  # k: the k-th fresh candidate of cmaes/tpe/random, drawn with the seed (seed, k)
COPY_OF = "longrope_copy_of"  # a user attr of a re-queued copy: the number of the trial it stands in for,
#                               so a resume killed between queueing a copy and failing the original
#                               does not queue a second (the evolution's copies also carry their SLOT)

# -- study system attrs --------------------------------------------------------------------------
STOPPED = "longrope_stopped"  # generation at which the early stop fired (absent: not stopped)
PARENTS_PREFIX = "longrope_parents_"  # + generation as 4 digits: trial numbers of its parents


def parents_key(g: int) -> str:
    """The study system attr holding generation g's parents, e.g. longrope_parents_0003."""
    return f"{PARENTS_PREFIX}{g:04d}"


# -- study user attrs ----------------------------------------------------------------------------
STAGE = "stage"  # {"kind": "long" | "short", "length": L, "budget": evaluations, "sampler": name,
#                   "critical_dim": pair index | None (off), "below_critical": "ntk" | "search",
#                   "mscale": float | "search"}; the last three absent in runs made before they existed
HELDOUT = "heldout"  # {"trial", "ppl", "text": hash of the held-out text}: the stage best's held-out score
SAMPLES = "needle_samples"  # needle objective: [{doc, depth, key, needle_at, answer_at, length}, ...],
#                             the samples every candidate of the stage is scored on (checked on resume)
DOCUMENTS = "documents"  # ppl objective: [{tokens, sha256 of the token ids}, ...], the stage's search
#                          documents (checked on resume; runs made before it record them on resume)
BRED_FROM = "bred_from"  # {lambdas, n_hat, mscale} | null: the previous stage's best this long stage's
#                         seeds began with (kept on resume; absent in runs made before it: recorded then)
CONFIG = "config"  # the run config (RunConfig.to_dict()) as the stage started under it: a resume's
#                    search-defining keys are checked against it too, since config.toml can be edited
DTYPE = "dtype"  # "float32" | "bfloat16" | "float16": what the stage's candidates are scored in (model.dtype,
#                  auto resolved on the workers' device; checked on resume, recorded then by older runs)
LAG = "draw_lag"  # cmaes/tpe: the sampler of draw k reads the draws below k - lag + 1 (the worker count the
#                  stage began with; 1 in process), so results arriving in any order change nothing
MODEL = "model_fingerprint"  # model.path's weights as objectives.models.fingerprint reads them (absent
#                               where the driver cannot see the path): a resume may name a moved copy

# -- trial user attrs (one scored candidate) -----------------------------------------------------
DOC_NLL = "doc_nll"  # mean token NLL of each document scored, in order (fewer when pruned or failed)
TOKENS = "tokens"  # tokens run through the model
SECONDS = "seconds"  # wall seconds of the evaluation, rounded to 0.1 ms
TAIL_PPL = "tail_ppl"  # last-quarter perplexity over the documents (complete trials only)
REASON = "reason"  # why a trial was pruned (early abort) or failed
