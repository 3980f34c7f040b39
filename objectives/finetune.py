"""The fine-tune stage: LongLoRA (Chen et al. 2024) on the model with a stage's factors applied.

LongRoPE (section 3.3) fine-tunes at 128k/256k with the searched factors, then searches again
on the fine-tuned model for 8x further. Its training code is not public; LongLoRA makes that
fine-tune cheap, and is what this module does:
- what trains (LongLoRA's "LoRA+", section 3.3): LoRA on the attention projections (peft), plus
  the embeddings and normalisation layers, which its ablation shows long context needs;
- how: S2-Attn (objectives/s2attn.py) while training, full attention after; the stage's
  factors, n̂ included, in the rotary (objectives/rotary.py), so the model learns the positions
  it will be searched and used with;
- on what: windows of L tokens from the search pool's documents, never the held-out ones. Each
  step's windows are a pure function of (seed, step), and the checkpoint holds the trainable
  tensors, the optimizer state and the losses, so a killed fine-tune resumes where its last
  checkpoint was and ends where an uninterrupted one would.

`work/progress.json` says step, loss and ETA for `longrope status`; the merged model (LoRA
folded into the weights) is saved as a plain transformers folder with the tokenizer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from longrope.spaces import RescaleFactors, UserError, architecture_of
from longrope.spaces.files import atomic_write_bytes, atomic_write_text

from .devices import out_of_memory
from .specs import FinetuneSpec, ObjectiveSpec

CHECKPOINT = "checkpoint.pt"
PROGRESS = "progress.json"
RECORD = "training.json"


def norm_modules(model: Any) -> list[Any]:
    """The normalisation layers (RMSNorm, LayerNorm) of any transformers architecture."""
    return [m for m in model.modules() if type(m).__name__.endswith(("RMSNorm", "LayerNorm"))]


def prepare(model: Any, ft: FinetuneSpec, factors: RescaleFactors) -> Any:
    """The peft model to train: factors applied, LoRA on ft.lora_targets, embeddings and norms
    trainable when asked, every other weight frozen."""
    import torch
    from peft import LoraConfig, get_peft_model

    from .rotary import apply_factors

    apply_factors(model, factors)
    model.requires_grad_(False)
    torch.manual_seed(ft.seed)  # LoRA's A init
    lora = LoraConfig(r=ft.lora_rank, lora_alpha=ft.lora_alpha, target_modules=list(ft.lora_targets),
                      lora_dropout=0.0, bias="none")
    import warnings

    try:
        with warnings.catch_warnings():  # transformers' deprecation notes, called by peft
            warnings.simplefilter("ignore", FutureWarning)
            peft_model = get_peft_model(model, lora)
    except ValueError as e:  # no module matches a target name
        why = str(e).splitlines()[0]
        raise UserError(f"finetune.lora_targets = {list(ft.lora_targets)}: {why}") from None
    if ft.train_embeddings_norms:
        for m in [model.get_input_embeddings(), *norm_modules(model)]:
            m.requires_grad_(True)
    return peft_model


def check_targets(spec: ObjectiveSpec, ft: FinetuneSpec) -> None:
    """Every name in ft.lora_targets must name a linear layer of the model (checked on an empty
    meta-device copy, before the search): peft refuses only a list that matches nothing, so on a
    fused-attention model (Phi-3: qkv_proj) the default list would silently adapt o_proj alone."""
    import torch
    import transformers

    from .models import read_config, resolve

    config = read_config(*resolve(spec.model.path))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                     if isinstance(module, torch.nn.Linear)})
    missing = [t for t in ft.lora_targets if t not in linear]
    if missing:
        raise UserError(f"finetune.lora_targets: {', '.join(missing)} name no linear layer of "
                        f"{spec.model.path} ({config.model_type}); its linear layers: {', '.join(linear)}")
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if module is head}
    if tied and names & set(ft.lora_targets):  # merged, the adapter would change the input embeddings too
        raise UserError(f"finetune.lora_targets: {', '.join(sorted(names & set(ft.lora_targets)))} shares "
                        f"its weight with the input embeddings in {spec.model.path} (tie_word_embeddings): "
                        "the merged model would not be the one trained; leave it out (the embeddings "
                        "train with train_embeddings_norms)")


def windows(docs: list[np.ndarray], length: int, count: int, seed: int, step: int) -> np.ndarray:
    """[count, length] token windows for `step`: a document and an offset each, drawn from
    rng(seed, step) so any step's batch can be rebuilt after a restart."""
    return training_batch(docs, length, count, seed, step)[0]


def training_batch(docs: list[np.ndarray], length: int, count: int, seed: int, step: int,
                   builder: Any = None, mix: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(ids [count, length], answer [count, length] bool): `windows`, with a fraction `mix` of
    them turned into pass-key samples (needle.py: the window's text with a key hidden at a
    random depth and asked for at the end); `answer` marks their answer tokens. Drawn from
    rng(seed, step) like the plain windows, which mix = 0 leaves exactly as they were."""
    rng = np.random.default_rng([seed, step])
    rows, answer = [], np.zeros((count, length), dtype=bool)
    for r in range(count):
        d = docs[int(rng.integers(len(docs)))]
        start = int(rng.integers(len(d) - length + 1))
        row = d[start:start + length]
        if mix and rng.random() < mix:
            sample = builder.build(d[start:], length, float(rng.random()), builder.key(rng))
            row, answer[r, sample.answer_at:] = np.asarray(sample.ids), True
        rows.append(row)
    return np.stack(rows).astype(np.int64), answer


def is_short_step(seed: int, step: int, mix: float) -> bool:
    """Does `step` train at L0 (finetune.short_mix)? Drawn from its own stream rng(seed, step, 1),
    so any step's kind is known after a restart and mix = 0 leaves every step as it was."""
    return bool(mix) and float(np.random.default_rng([seed, step, 1]).random()) < mix


LOSS_CHUNK = 1024  # positions whose logits exist at once in the loss (forward and backward)


def checkpoint_activations(model) -> None:
    """Recompute each layer's activations in the backward pass instead of keeping them (torch's
    non-reentrant checkpoint). transformers 5.25 renamed the switch and warns at the old name on
    every fine-tune; 4.57 has only the old one."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def step_loss(model: Any, ids: Any, answer: Any, chunk: int = LOSS_CHUNK) -> Any:
    """The causal LM loss over every token, plus (when the batch has pass-key samples) the mean
    loss of their answer tokens: a handful of tokens in L would otherwise teach nothing.

    The head and its float32 log-softmax run `chunk` positions at a time, each recomputed in the
    backward (activation checkpointing), as the scorer does: `labels=` held the whole [B, L, V]
    logits, twice over with their float32 copy, and their gradients (Llama-3's vocabulary at 128k
    tokens: over 100 GB, more than the model)."""
    import torch
    from torch.utils.checkpoint import checkpoint

    from .headnll import logit_scales, nll_of, postprocess

    model = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft's: LoRA inside
    arch = architecture_of(model.config)
    head, (divide, multiply) = getattr(model, arch.head), logit_scales(arch, model.config)
    hidden = getattr(model, arch.decoder)(input_ids=ids, use_cache=False).last_hidden_state
    hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])  # position t predicts token t + 1
    targets, at = ids[:, 1:].reshape(-1), answer[:, 1:].reshape(-1)

    def sums(h: Any, t: Any, a: Any) -> tuple[Any, Any]:  # NLL summed over all, and over answers
        nll = nll_of(postprocess(head(h).float(), divide, multiply), t)
        return nll.sum(), (nll * a).sum()

    total = answers = hidden.new_zeros((), dtype=torch.float32)
    # split, not slices: each slice's backward wrote a zero tensor of the whole `hidden` (L / chunk of them)
    for part in zip(hidden.split(chunk), targets.split(chunk), at.split(chunk), strict=True):
        s, a = checkpoint(sums, *part, use_reentrant=False) if torch.is_grad_enabled() else sums(*part)
        total, answers = total + s, answers + a
    loss = total / targets.numel()
    return loss + answers / at.sum() if bool(at.any()) else loss


def training_docs(spec: ObjectiveSpec, tokenizer: Any, length: int) -> list[np.ndarray]:
    """The search pool's documents that reach `length` tokens (the held-out pool never trains)."""
    from .cache import cache_root
    from .data import Split, load_data, tokenize

    d = spec.data
    tokens = tokenize(load_data(d), tokenizer, d.cache_dir or cache_root())
    split = Split.make(len(tokens), d.split_seed)
    docs = [tokens[i] for i in split.search if len(tokens[i]) >= length]
    if not docs:
        raise UserError(f"finetune at {length}: no search-pool document reaches {length} tokens")
    return docs


def fingerprint(spec: ObjectiveSpec, ft: FinetuneSpec, factors: RescaleFactors, length: int,
                home: str | Path | None = None) -> str:
    """What defines a fine-tune's trajectory; a checkpoint from another one is refused. A model
    inside `home` (the run folder: a second fine-tune trains the first one's model) counts by its
    path relative to it, so the run folder may move, or be mounted elsewhere on another host."""
    model = spec.model.path
    if home is not None and not model.startswith("builtin:"):
        try:
            model = "<run>/" + Path(model).resolve().relative_to(Path(home).resolve()).as_posix()
        except ValueError:  # not inside: the path as given
            pass
    what = {"model": model, "data": dataclasses.asdict(spec.data), "length": length,
            "factors": factors.to_dict(), "finetune": {k: v for k, v in dataclasses.asdict(ft).items()
                                                       if k not in ("after", "checkpoint_every")}}
    what["data"].pop("cache_dir")
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def finetune(spec: ObjectiveSpec, ft: FinetuneSpec, factors: RescaleFactors, length: int,
             work: str | Path, out: str | Path, progress: bool = True,
             check: Callable[[], None] | None = None, home: str | Path | None = None) -> dict[str, Any]:
    """Fine-tune spec's model at `length` with `factors`, checkpointing into `work`, and save the
    merged model to `out` (replaced if there). Resumes from work's checkpoint. Returns the record
    (also work/training.json). `check()` runs before each step's writes and before the merged
    model's: the driver's lease (a driver taken over while this trained stops here, leaving
    `work` to the new holder); it must pickle when this runs as a Ray task. `home`: the run
    folder, which may move between a kill and the resume (`fingerprint`)."""
    import torch
    from tqdm.auto import tqdm

    from .attention import set_attention
    from .models import load_model, training_attention, training_dtype
    from .rotary import patch_model
    from .s2attn import register

    work, out = Path(work), Path(out)
    work.mkdir(parents=True, exist_ok=True)
    m = spec.model
    dtype = training_dtype(m.dtype, m.device)
    attention = training_attention(m.attention, dtype)
    loaded = load_model(m.path, dtype, m.device, attention, m.threads, m.tokenizer)
    if loaded.alibi:
        raise UserError(f"{m.path} uses ALiBi: there are no rotary factors to fine-tune with")
    docs = training_docs(spec, loaded.tokenizer, length)
    builder = None
    if ft.passkey_mix:
        from .needle import NeedleBuilder

        builder = NeedleBuilder(loaded.tokenizer)
    model = prepare(loaded.model, ft, factors)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    # In bfloat16 (the GPU default) an Adam step of ~lr on a norm weight near 1 is below half its
    # spacing and would round away: such weights are stepped as float32 masters, copied back after
    # each step (mixed precision's master weights). float32 ones (CPU) are their own masters.
    masters = {n: p if p.dtype == torch.float32 else p.detach().float().requires_grad_(True)
               for n, p in params}
    low = [(p, masters[n]) for n, p in params if masters[n] is not p]  # (weight, its float32 master)
    opt = torch.optim.AdamW(list(masters.values()), lr=ft.lr, weight_decay=0.0)
    key = fingerprint(spec, ft, factors, length, home)
    start, losses, seconds = 0, [], 0.0
    ckpt = work / CHECKPOINT
    if ckpt.exists():
        # on the host: copy_ below moves the masters, the optimizer its moments (to their weights' device)
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state["fingerprint"] not in (key, fingerprint(spec, ft, factors, length)):  # or as before `home`
            raise UserError(f"{ckpt} belongs to another fine-tune (model, data, factors or [finetune] "
                            "changed); delete it to start this one afresh")
        if state.get("dtype", dtype) != dtype:  # (none recorded before session 41) another kind of machine
            raise UserError(f"{ckpt} trained in {state['dtype']} up to step {state['step']}, and this "
                            f"machine trains in {dtype} (model.dtype = {m.dtype!r} here): set [model] "
                            f"dtype = \"{state['dtype']}\" in the run's config.toml and resume, or delete "
                            "the checkpoint to train afresh")
        with torch.no_grad():
            for n, p in params:
                masters[n].copy_(state["params"][n])
                p.copy_(masters[n])
        opt.load_state_dict(state["optimizer"])
        start, losses, seconds = state["step"], list(state["losses"]), state["seconds"]
        del state  # until the next save it held a copy of every master
    saved = start  # the step of the last checkpoint written
    group = ft.group(length) if ft.s2_attn else length
    full = model.config._attn_implementation  # what inference (and short steps) run
    s2 = register(group) if group < length else None
    if s2 is not None:
        set_attention(model, s2)
    rot, L0 = patch_model(loaded.model), loaded.geometry.original_length
    # Short steps run θ unscaled (λ = 1, mscale 1: the model's own rotary, bit for bit, on a plain
    # config), also when the model is an earlier fine-tune whose config carries its long factors
    # and attention factor: a second fine-tune trains its short steps as the first one did.
    original = RescaleFactors.uniform(1.0, loaded.geometry.n_freqs)
    if loaded.device == "cuda":  # activations of long sequences: recompute instead of keeping
        checkpoint_activations(model)
    model.train()
    batch = max(1, ft.batch_tokens // length)
    bar = tqdm(total=ft.steps, initial=start, desc=f"finetune-{length}", unit="step", disable=not progress,
               dynamic_ncols=True)
    for step in range(start, ft.steps):
        t0 = time.perf_counter()
        torch.manual_seed(ft.seed * 1_000_003 + step)  # dropout's masks: a resumed step draws the same
        for g in opt.param_groups:  # linear warm-up, then constant (LongLoRA's schedule)
            g["lr"] = ft.lr * min(1.0, (step + 1) / ft.warmup) if ft.warmup else ft.lr
        short = is_short_step(ft.seed, step, ft.short_mix)
        if short:  # mixed context windows: L0 tokens, the original rotary, full attention
            ids, answer = training_batch(docs, L0, max(1, (ft.batch_tokens or length) // L0), ft.seed, step)
        else:
            ids, answer = training_batch(docs, length, batch, ft.seed, step, builder, ft.passkey_mix)
        ids, answer = torch.from_numpy(ids).to(loaded.device), torch.from_numpy(answer).to(loaded.device)
        if ft.short_mix:
            rot.set_factors(original if short else factors)
            if s2 is not None:
                set_attention(model, full if short else s2)
        opt.zero_grad(set_to_none=True)  # before the forward: last step's gradients hold no memory in it
        for p, _ in low:  # not in the optimizer: cleared here
            p.grad = None
        try:
            loss = step_loss(model, ids, answer)
            if not torch.isfinite(loss):  # stepped, NaN would reach every weight, the merge, each later stage
                raise UserError(f"the fine-tune at {length} diverged: its loss is {float(loss)} at step "
                                f"{step + 1} (the checkpoint of step {saved} is kept); a lower [finetune] lr "
                                f"than {ft.lr:g} or more warm-up steps, in a new run")
            loss.backward()
        except RuntimeError as e:
            if not out_of_memory(e):
                raise
            raise UserError(f"out of GPU memory in fine-tune step {step + 1} at {length} tokens (the "
                            f"checkpoint of step {saved} is kept): try [finetune] batch_tokens = {length} "
                            f"(one sequence a step; it is {ft.batch_tokens}), [model] dtype = \"bfloat16\", "
                            "or a shorter target, in a new run") from None
        for p, m in low:
            m.grad = None if p.grad is None else p.grad.float()
        norm = torch.nn.utils.clip_grad_norm_(list(masters.values()), 1.0)
        if not torch.isfinite(norm):  # a finite loss whose backward overflowed: stepped, NaN weights
            raise UserError(f"the fine-tune at {length} diverged: its gradients are not finite at step "
                            f"{step + 1} (the checkpoint of step {saved} is kept); a lower [finetune] lr "
                            f"than {ft.lr:g} or more warm-up steps, in a new run")
        opt.step()
        with torch.no_grad():
            for p, m in low:
                p.copy_(m)
        losses.append(float(loss.detach()))
        seconds += time.perf_counter() - t0
        done = step + 1
        if check is not None:
            check()
        if done % ft.checkpoint_every == 0 or done == ft.steps:
            state = {"fingerprint": key, "dtype": dtype, "step": done, "losses": losses, "seconds": seconds,
                     # to the host as they are saved: a clone on the GPU held a second copy there
                     "params": {n: m.detach().cpu() for n, m in masters.items()},
                     "optimizer": opt.state_dict()}
            buf = io.BytesIO()
            torch.save(state, buf)
            atomic_write_bytes(ckpt, buf.getvalue())
            saved = done
        # after the checkpoint: checkpoint_step never names one not yet on disk (status shows it:
        # a resume after a kill continues from there, not from `step`)
        _write_json(work / PROGRESS, {"length": length, "step": done, "steps": ft.steps, "loss": losses[-1],
                                      "checkpoint_step": saved, "seconds_per_step": seconds / done,
                                      "eta_seconds": seconds / done * (ft.steps - done), "time": time.time()})
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    rot.set_factors(factors)
    set_attention(model, full)
    model.eval()
    if check is not None:
        check()
    save_merged(model, loaded, out)
    kinds = [is_short_step(ft.seed, k, ft.short_mix) for k in range(ft.steps)]
    long_losses = [x for x, short in zip(losses, kinds, strict=True) if not short] or losses
    record = {"length": length, "steps": ft.steps, "batch_sequences": batch, "s2_group": group,
              "short_steps": sum(kinds), "trainable_params": sum(p.numel() for _, p in params),
              "train_seconds": round(seconds, 3),
              "final_loss": float(np.mean(long_losses[-10:])), "losses": losses, "fingerprint": key}
    _write_json(work / RECORD, record)
    return record


def save_merged(peft_model: Any, loaded: Any, out: Path) -> None:
    """LoRA folded into the weights, saved with the tokenizer as a plain transformers folder (with
    the top-level rope_theta transformers 4.57 reads)."""
    import warnings

    if out.exists():
        shutil.rmtree(out)  # a merge killed half-way
    merged = peft_model.merge_and_unload()
    merged.config.use_cache = True
    with warnings.catch_warnings():  # transformers' deprecation notes about its own internals
        warnings.simplefilter("ignore", FutureWarning)
        merged.save_pretrained(str(out))
    loaded.tokenizer.save_pretrained(str(out))
    cfg = json.loads((out / "config.json").read_text())
    cfg.setdefault("rope_theta", loaded.geometry.base)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
