"""What a scoring worker needs, one spec per concern: the model, the data, the task.

`ModelSpec` and `DataSpec` are defined once, here, with a comment on each
field saying which values it takes; the run config's ``[model]`` and
``[data]`` sections ARE these classes (search/config.py composes them), and
`ObjectiveSpec` is the triple a worker builds its objective from. A new model,
data or task option is one field here (``[objective]`` is the task). All are
plain dataclasses, picklable for Ray.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args

from annotated_types import Ge, Gt, Interval

from longrope.spaces import UserError

from .fields import check

# The choices and bounds, as types: fields.py checks them (for the run config's reader and for
# each spec's `validate` alike); the tuples below are the command-line flags' choices.
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda"]
Attention = Literal["sdpa", "flash_attention_2", "eager"]
Nll = Literal["auto", "eager", "compiled"]
Task = Literal["ppl", "needle"]
DTYPES, DEVICES, NLLS = get_args(Dtype), get_args(Device), get_args(Nll)
ATTENTIONS = get_args(Attention)
NonNegInt = Annotated[int, Ge(0)]  # bounds, checked with the types
PosInt = Annotated[int, Ge(1)]
Seed = Annotated[int, Interval(ge=0, lt=2**31)]  # numpy's and Optuna's generators refuse a negative seed
PosFloat = Annotated[float, Gt(0)]
NonNegFloat = Annotated[float, Ge(0)]
Fraction = Annotated[float, Interval(gt=0, lt=1)]  # strictly between 0 and 1
Probability = Annotated[float, Interval(ge=0, le=1)]  # 0 and 1 included


@dataclass
class ModelSpec:
    path: str = "builtin:tiny-sotu"  # HF folder | file.gguf | builtin:tiny-sotu | builtin:smollm2-135m
    dtype: Dtype = "auto"  # auto (CPU fp32, GPU bf16, before Ampere fp16) | float32 | bfloat16 | float16
    device: Device = "auto"  # auto | cpu | cuda
    attention: Attention = "sdpa"  # sdpa | flash_attention_2 | eager
    threads: NonNegInt = 0  # torch CPU threads per worker; 0 = leave torch's default
    tokenizer: str = ""  # a folder (or builtin:) holding the tokenizer; "" = the model's own
    # the head's float32 log-softmax: auto (torch.compile on GPU, eager on CPU) | eager | compiled
    nll: Nll = "auto"

    def validate(self, where: str = "model") -> None:
        """Impossible values, named as ``[where] key`` (the run config's section): the annotations'
        choices and bounds (fields.check), then what they cannot say."""
        check(self, where)
        if not self.path:
            raise UserError(f"{where}.path is empty")
        if self.attention == "flash_attention_2" and self.dtype == "float32":  # transformers only warns
            raise UserError(f"{where}.attention = 'flash_attention_2' runs in bfloat16 or float16, not "
                            f"float32; set {where}.dtype = 'bfloat16' (or 'auto'), or attention = 'sdpa'")


@dataclass
class DataSpec:
    path: str = "builtin:sotu"  # builtin:sotu | hub id | .txt, .jsonl, .json, .csv, .parquet file or folder
    text_column: str = "text"  # column holding the text (jsonl, json, csv, parquet, hub)
    per_line: bool = False  # .txt: one document per line instead of per file
    split: str = "train"  # the dataset's split (hub id or a folder with test.jsonl, ...); a file is "train"
    config: str = ""  # the hub dataset's configuration name; "" = its default
    streaming: bool = False  # read only the first stream_docs documents, never the whole split
    # streaming: documents taken from the start; 0 = 2 x max(search_docs, heldout_docs)
    stream_docs: NonNegInt = 0
    search_docs: PosInt = 5  # documents scored per candidate (paper: 5 PG19 docs)
    heldout_docs: NonNegInt = 5  # disjoint documents for the held-out report
    split_seed: Seed = 0  # seeds the document split
    cache_dir: str = ""  # token-id cache; "" = ~/.cache/longrope

    def validate(self, where: str = "data") -> None:
        check(self, where)
        if not self.path:
            raise UserError(f"{where}.path is empty")
        if not self.text_column:
            raise UserError(f"{where}.text_column is empty")
        if not self.split:
            raise UserError(f"{where}.split is empty (a file's one split is train)")
        if self.stream_docs and not self.streaming:
            raise UserError(f"{where}.stream_docs = {self.stream_docs} needs {where}.streaming = true")
        need = 2 * max(self.search_docs, self.heldout_docs)
        if self.stream_docs and self.stream_docs < need:  # else: "only 1 of the 1 search documents ..."
            raise UserError(f"{where}.stream_docs = {self.stream_docs} cannot fill both pools: the split "
                            "deals the documents read alternately into the search and held-out ones, so it "
                            f"needs at least twice the larger pool's documents ({need})")

    def stream_count(self) -> int:
        """Documents a streamed source yields: the split deals them alternately into the two
        pools, so 2 x max(search_docs, heldout_docs) fill both."""
        return self.stream_docs or 2 * max(self.search_docs, self.heldout_docs)


@dataclass
class TaskSpec:
    kind: Task = "ppl"  # ppl: document perplexity | needle: NLL of pass keys hidden in the documents' text
    depths: PosInt = 10  # needle: depths per stage, evenly spread over [0, 1] (0 = start of the text)
    per_depth: PosInt = 1  # needle: samples per depth, each from the next document (documents cycle)
    seed: Seed = 0  # needle: seeds the keys; the samples are a pure function of (seed, length, documents)

    def validate(self, where: str = "objective") -> None:
        check(self, where)


@dataclass
class FinetuneSpec:
    """LongRoPE's fine-tune between searches, the LongLoRA way (objectives/finetune.py)."""

    after: list[int] = field(default_factory=list)  # targets after whose search a fine-tune runs
    steps: PosInt = 400  # optimizer steps (LongRoPE: 400 at 128k, 600 at 256k)
    lr: Fraction = 2e-5  # peak learning rate, linear warm-up then constant (LongLoRA: 2e-5)
    warmup: NonNegInt = 20  # warm-up steps (LongLoRA: 20)
    batch_tokens: NonNegInt = 0  # tokens per step: batch_tokens // L sequences of the target length; 0 = one
    lora_rank: PosInt = 8  # LoRA rank r (LongLoRA: 8)
    lora_alpha: PosFloat = 16.0  # LoRA scale α (the update is α/r · BA; LongLoRA: 16)
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    train_embeddings_norms: bool = True  # LongLoRA's "LoRA+": LoRA alone does not adapt to long context
    s2_attn: bool = True  # shifted sparse attention while training (full attention at inference)
    s2_group: NonNegInt = 0  # S2-Attn group size G; 0 = L/4 (LongLoRA's 1/4)
    checkpoint_every: PosInt = 50  # steps between checkpoints (a killed fine-tune resumes from the last)
    seed: Seed = 0  # seeds the LoRA init and every step's windows
    # fraction of the long (length-L) training windows turned into pass-key samples (a key hidden
    # in the window's text, asked for at its end; their answer's loss is added; short_mix's L0
    # windows stay plain text): LongLoRA trains on plain text
    passkey_mix: Probability = 0.0
    # fraction of steps trained on windows of the model's trained length L0 with its own rotary and
    # full attention (LongRoPE2's mixed context window training, section 3.3): keeps short context
    # (the bench's sweep at 4x: 1.005x the original's L0 perplexity at 0.5, 1.029x at 0)
    short_mix: Probability = 0.5

    def validate(self, where: str = "finetune", targets: list[int] | None = None) -> None:
        check(self, where)
        if targets is not None and any(t not in targets for t in self.after):
            bad = next(t for t in self.after if t not in targets)
            raise UserError(f"{where}.after: {bad} is not one of space.targets {targets}")
        if self.after != sorted(set(self.after)):
            raise UserError(f"{where}.after must be ascending without repeats, got {self.after}")
        if not self.lora_targets:
            raise UserError(f"{where}.lora_targets is empty: name the projections LoRA adapts")
        if self.s2_group % 2:
            raise UserError(f"{where}.s2_group = {self.s2_group} must be even (half the heads shift by G/2)")
        if self.s2_attn:
            for t in self.after:
                self.group(t)

    def group(self, length: int) -> int:
        """S2-Attn's group size at `length` (checked against it)."""
        from .s2attn import fits

        g = self.s2_group or length // 4
        if not fits(length, g):
            raise UserError(f"finetune.s2_group = {g} must be even and divide the target length {length}")
        return g


@dataclass(frozen=True)
class ObjectiveSpec:
    """The model, the data and the task a worker scores candidates with."""

    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    task: TaskSpec = field(default_factory=TaskSpec)
    batch_docs: int = 1  # documents per forward (the run's workers.batch_docs): speed, not results

    @classmethod
    def from_config(cls, cfg: Any) -> ObjectiveSpec:
        """From a run config (anything with ``model`` and ``data`` sections); copies, so a later
        change to the config does not reach a spec already handed to workers."""
        workers = getattr(cfg, "workers", None)
        return cls(dataclasses.replace(cfg.model), dataclasses.replace(cfg.data),
                   dataclasses.replace(cfg.objective), getattr(workers, "batch_docs", 1))

    @classmethod
    def of(cls, model: str = ModelSpec.path, data: str = DataSpec.path, **kw: Any) -> ObjectiveSpec:
        """Keyword shorthand: ``model``/``data`` are the paths, every other key goes to the
        spec that has a field of that name (``threads`` to the model, ``search_docs`` to the
        data, ``kind`` and ``depths`` to the task)."""
        m = {f.name for f in dataclasses.fields(ModelSpec)}
        d = {f.name for f in dataclasses.fields(DataSpec)}
        t = {f.name for f in dataclasses.fields(TaskSpec)}
        unknown = set(kw) - m - d - t
        if unknown:
            raise TypeError(f"unknown objective keys: {', '.join(sorted(unknown))}")
        return cls(ModelSpec(model, **{k: v for k, v in kw.items() if k in m}),
                   DataSpec(data, **{k: v for k, v in kw.items() if k in d}),
                   TaskSpec(**{k: v for k, v in kw.items() if k in t}))
