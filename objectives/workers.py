"""Evaluators: load the model and the documents once, then score candidates.

`Evaluator` runs in the calling process; `ray_evaluator_class()` wraps the same
class as a Ray actor (the model loads in the actor's constructor, one replica
per actor). Both expose evaluate(factors, length, threshold) -> Evaluation,
so the search driver is indifferent to where a candidate runs. Eval alone also passes an
LMInfinite setting as the factors, and a stride for sliding-window perplexity.
"""

from __future__ import annotations

import hashlib

import numpy as np

from longrope.spaces import RescaleFactors, RopeGeometry, UserError, architecture_of

from .data import Split, load_data, tokenize
from .devices import out_of_memory
from .lm_infinite import LMInfinite
from .perplexity import Evaluation, score, stride_span
from .specs import ObjectiveSpec


class Evaluator:
    """One model replica with its tokenised corpus; candidates switch by buffer copy."""

    def __init__(self, spec: ObjectiveSpec):
        from .cache import cache_root
        from .headnll import warm_up
        from .models import load_model
        from .rotary import patch_model

        self.spec = spec
        self.gpu_share: float | None = None  # the memory cap of a replica given a share of one GPU
        m, d = spec.model, spec.data
        self.corpus = load_data(d)  # cheap errors first
        self.loaded = load_model(m.path, m.dtype, m.device, m.attention, m.threads, m.tokenizer, m.nll)
        self.rotary = patch_model(self.loaded.model, self.loaded.geometry)
        warm_up(self.loaded.model, architecture_of(self.loaded.model.config))  # a compiled head: now
        self.tokens = tokenize(self.corpus, self.loaded.tokenizer, d.cache_dir or cache_root())
        self.split = Split.make(len(self.tokens), d.split_seed)
        self._docs: dict[tuple[str, int, int], list[np.ndarray]] = {}
        self._samples: dict[tuple[str, int], list] = {}

    @property
    def geometry(self) -> RopeGeometry:
        return self.loaded.geometry

    def docs(self, length: int, pool: str = "search", count: int | None = None) -> list[np.ndarray]:
        if count is None:
            count = self.spec.data.search_docs if pool == "search" else self.spec.data.heldout_docs
        key = (pool, length, count)
        if key not in self._docs:
            self._docs[key] = self.split.take(pool, self.tokens, length, count)
        return self._docs[key]

    def check(self, lengths: list[int]) -> RopeGeometry:
        """Fail early (one clear line) if any length lacks documents or the model has no rotary
        to search factors for; return the geometry."""
        self.refuse_factors("a factor search")
        self.check_pool(lengths, "search")
        if self.spec.data.heldout_docs:
            self.check_pool(lengths, "heldout")
        return self.geometry

    def check_pool(self, lengths: list[int], pool: str) -> None:
        """Every length's documents, and its needle samples for a needle task (a stage too short
        for one is refused here, before the run is made, not once the stages before it ran)."""
        for length in lengths:
            self.docs(length, pool)
            if self.spec.task.kind == "needle":
                self.needle_samples(length, pool)

    def refuse_factors(self, what: str) -> None:
        if self.loaded.alibi:
            raise UserError(f"{self.loaded.name} uses ALiBi, not RoPE: {what} needs rotary "
                            "embeddings; its only method is none")

    def method(self, name: str, length: int) -> RescaleFactors | LMInfinite | None:
        """What eval's method `name` scores `length` tokens with on this model (methods.py); on
        an ALiBi model only ``none`` (and ``native``), which is the model as it is."""
        from .methods import NATIVE, method_factors

        if self.loaded.alibi and name in ("none", NATIVE):
            return None
        if self.loaded.alibi:
            self.refuse_factors(f"method {name!r}")
        return method_factors(name, self.geometry, length)

    def precision(self) -> str:
        """The dtype this replica scores in (model.dtype, auto resolved on its device)."""
        return self.loaded.dtype

    def needle_samples(self, length: int, pool: str = "search") -> list:
        """The task's needle samples at `length`, built on the pool's documents (cached)."""
        from .needle import NeedleBuilder, make_samples

        key = (pool, length)
        if key not in self._samples:
            t = self.spec.task
            builder = NeedleBuilder(self.loaded.tokenizer)
            self._samples[key] = make_samples(builder, self.docs(length, pool), length, t.depths, t.seed,
                                              t.per_depth, pool)
        return self._samples[key]

    def task_records(self, length: int, pool: str = "search") -> list[dict]:
        """What the task scores at `length`, for the run to record and a resume to check: the
        needle samples, or each document's token count and a hash of its token ids (the split
        fixes which documents, but an edited file or a new dataset revision changes them)."""
        if self.spec.task.kind == "needle":
            return [s.record() for s in self.needle_samples(length, pool)]
        return [{"tokens": len(d), "sha256": hashlib.sha256(np.ascontiguousarray(d, np.int64).tobytes())
                 .hexdigest()[:16]} for d in self.docs(length, pool)]

    def evaluate(self, factors: RescaleFactors | LMInfinite | None, length: int,
                 threshold: float | None = None, pool: str = "search", kind: str | None = None,
                 stride: int | None = None) -> Evaluation:
        """Score factors (None: the model's own rotary; LMInfinite: the model as trained with
        LM-Infinite's attention) by the task's kind, or by `kind`. stride (perplexity only):
        sliding windows of `length` tokens advancing by `stride` over each document's first
        2·length - stride tokens (perplexity.stride_windows); None: each document's first
        `length` tokens in one pass. Out of GPU memory on one document is the run's one line:
        every candidate at this length needs as much (the factors change no shape)."""
        import torch

        try:
            return self._evaluate(factors, length, threshold, pool, kind, stride)
        except RuntimeError as e:
            if not out_of_memory(e):
                raise
            torch.cuda.empty_cache()
            m, share = self.spec.model, self.gpu_share
            cap = f" (this replica may use {share:g} of the GPU's memory: workers.num_gpus)" if share else ""
            first = str(e).splitlines()[0][:160]
            raise UserError(f"out of GPU memory scoring {length} tokens ({first}){cap}; "
                            f"every candidate at this length needs as much. With dtype {m.dtype} and "
                            f"attention {m.attention}: try [model] dtype = \"bfloat16\", attention = "
                            "\"flash_attention_2\", fewer replicas per GPU (workers.num_gpus = 1), or a "
                            "shorter target") from None

    def _evaluate(self, factors: RescaleFactors | LMInfinite | None, length: int, threshold: float | None,
                  pool: str, kind: str | None, stride: int | None) -> Evaluation:
        if factors is not None and self.loaded.alibi:
            self.refuse_factors("scoring factors")
        if isinstance(factors, LMInfinite):
            from .lm_infinite import active

            with active(self.loaded.model, self.rotary, factors):
                return self.evaluate(factors.factors, length, threshold, pool, kind, stride)
        if (kind or self.spec.task.kind) == "needle":
            from .needle import score_needle

            if stride is not None:
                raise UserError("a stride applies to document perplexity, not to needle samples")
            return score_needle(self.loaded.model, self.rotary, factors, self.needle_samples(length, pool),
                                threshold)
        if stride is None:
            return score(self.loaded.model, self.rotary, factors, self.docs(length, pool), threshold,
                         batch=self.spec.batch_docs)
        docs = self.docs(stride_span(length, stride), pool)
        return score(self.loaded.model, self.rotary, factors, docs, threshold, stride=stride, window=length)

    def ping(self) -> bool:
        return True


def make_evaluator(spec: ObjectiveSpec):
    """The evaluator a spec names: a real model, or the documented synthetic objective."""
    if spec.model.path.startswith("synthetic"):
        from .synthetic import SyntheticEvaluator

        return SyntheticEvaluator(spec)
    return Evaluator(spec)


def on_ray_worker(spec: ObjectiveSpec, gpu_ids: list | None = None) -> ObjectiveSpec:
    """The spec a Ray actor or task given no GPU runs: on the CPU. Ray (2.60 here; the change is
    ray-project/ray#54868) leaves CUDA_VISIBLE_DEVICES as it is for one given none, so it sees
    every GPU of its node: model.device = "auto" would load every such replica onto GPU 0,
    uncounted beside the replicas that hold it, and leave the node's other GPUs idle.
    `gpu_ids`: ray.get_gpu_ids() (given by tests)."""
    import dataclasses

    if gpu_ids is None:
        import ray

        gpu_ids = ray.get_gpu_ids()
    if gpu_ids or spec.model.device == "cpu":
        return spec
    if spec.model.device == "cuda":
        raise UserError('model.device = "cuda" but this Ray worker holds no GPU: set workers.num_gpus '
                        '(1, or 0.25 for four replicas a GPU)')
    return dataclasses.replace(spec, model=dataclasses.replace(spec.model, device="cpu"))


CONTEXT_RESERVE = 1 << 30  # bytes a replica's CUDA context and kernels take outside its allocator's cap


def cap_gpu_share(device: str, share: float) -> float | None:
    """Keep a replica given a share of one GPU (workers.num_gpus = 0.25: four on a card) to that
    share of the card's memory; return the fraction its allocator is capped at, None where there
    is nothing to cap.

    Ray counts the shares and leaves their memory to the user. Without a cap PyTorch's caching
    allocator keeps what a replica's largest forward took, and the replicas beside it run out of
    memory in theirs, whichever asks last; with it, a replica past its share first frees its own
    cache and retries (and a batch halves, perplexity.batch_nll), and otherwise fails alone, its
    out-of-memory line naming the share. Each process's CUDA context (some 0.3-0.6 GiB) is
    outside the cap, so the cap is the share less CONTEXT_RESERVE (at most half the share): caps
    of the whole share added up to more than the card, and the last replica to allocate ran out
    below its cap."""
    if not 0 < share < 1 or not str(device).startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():  # Ray's declared GPUs on a CPU machine (the tests)
        return None
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    total = torch.cuda.get_device_properties(index).total_memory
    fraction = max(share - CONTEXT_RESERVE / total, share / 2)
    torch.cuda.set_per_process_memory_fraction(fraction, index)
    return fraction


class _Worker:
    """Ray actor body: builds its evaluator in the constructor (weights load once)."""

    def __init__(self, spec: ObjectiveSpec, share: float | None = None):
        import os

        import ray

        if share is None:  # the GPU share Ray gave this actor (given by tests)
            share = ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0)
        self.share = share
        if getattr(spec.model, "device", "auto") != "cpu":  # on the CPU no CUDA context is made
            cap_gpu_share("cuda", share)  # before the load: its peak, the compile warm-up's, in the share
        self.ev = make_evaluator(on_ray_worker(spec))
        loaded = getattr(self.ev, "loaded", None)  # the synthetic objective holds no model
        self.ev.gpu_share = cap_gpu_share(loaded.device if loaded else "cpu", share)
        self._pid = os.getpid()

    def gpu_share(self) -> tuple[float, float | None]:
        """(the GPU share Ray gave this replica, the share its memory is capped at)."""
        return self.share, self.ev.gpu_share

    def check(self, lengths: list[int]) -> RopeGeometry:
        return self.ev.check(lengths)

    def task_records(self, length: int, pool: str = "search") -> list[dict] | None:
        return self.ev.task_records(length, pool)

    def precision(self) -> str | None:
        return self.ev.precision()

    def evaluate(self, factors: RescaleFactors, length: int, threshold: float | None = None,
                 pool: str = "search", kind: str | None = None, stride: int | None = None) -> Evaluation:
        return self.ev.evaluate(factors, length, threshold, pool, kind, stride)

    def pid(self) -> int:
        return self._pid

    def fingerprint(self, path: str) -> str | None:
        """models.fingerprint(path) as this node sees it: a driver that does not see the model's
        path (a cluster's head node) records and checks the workers' view instead."""
        from .models import fingerprint

        return fingerprint(path)


def ray_worker_class():
    """The worker as a Ray actor class (imported lazily: Ray is optional in-process)."""
    import ray

    return ray.remote(max_restarts=0)(_Worker)
