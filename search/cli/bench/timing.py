"""Objective timing: the patched evaluation against a plain transformers forward, peak
memory of both paths, and the cost of one evaluation on a real model.

The memory and cost probes run in fresh processes (``python -m`` the probe
modules beside this one), so one path's allocations cannot inflate the other's.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from typing import Any

PROBES = "longrope.search.cli.bench"


def overhead_and_flops(model_spec: str, length: int, reps: int, nll: str = "auto") -> dict[str, Any]:
    """Patched evaluation (chunked NLL, its head NLL as `nll` says: headnll.py) vs a plain
    transformers forward with labels=, alternating, same tokens, on the model's device; and
    forward FLOP/s vs that device's matmul rate in the model's dtype."""
    import torch

    from longrope.objectives.devices import device_name, matmul_rate, median_seconds
    from longrope.objectives.headnll import ATTR
    from longrope.objectives.models import load_model
    from longrope.objectives.perplexity import document_nll
    from longrope.objectives.rotary import patch_model
    from longrope.spaces import method

    plain = load_model(model_spec, threads=0)
    patched = load_model(model_spec, threads=0, nll=nll)
    rot = patch_model(patched.model, patched.geometry)
    rot.set_factors(method("yarn", patched.geometry, length))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, plain.model.config.vocab_size, (1, length), generator=gen).to(plain.device)
    host_ids = ids[0].cpu().numpy()
    dev = plain.device

    def run_plain():
        with torch.no_grad():
            plain.model(ids, labels=ids).loss.item()

    def run_patched():
        document_nll(patched.model, host_ids)

    run_plain(), run_patched()  # warm up
    tp, tq = [], []
    for _ in range(reps):
        tp.append(median_seconds(run_plain, 1, dev))
        tq.append(median_seconds(run_patched, 1, dev))
    t_plain, t_patched = statistics.median(tp), statistics.median(tq)
    flops = forward_flops(plain.model, length)
    mm_rate = matmul_rate(dev, next(plain.model.parameters()).dtype)
    return {"overhead": t_patched / t_plain, "t_plain": t_plain, "t_patched": t_patched,
            "fwd_flops": flops, "fwd_rate": flops / t_patched, "matmul_rate": mm_rate,
            "cpu_efficiency": (flops / t_patched) / mm_rate, "device": device_name(dev),
            "nll": getattr(patched.model, ATTR)}


def forward_flops(model: Any, length: int) -> int:
    """FLOPs of one forward over `length` tokens: 2 per weight per token (the input embedding is
    a lookup; the LM head runs on every position, tied or not) plus causal attention, QKᵀ and AV
    at 2·L²·width each per layer, half of it masked."""
    cfg = model.config
    inp, out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    weights = sum(p.numel() for p in model.parameters()) - inp.numel() + (out.numel() if out is inp else 0)
    heads = cfg.num_attention_heads
    width = heads * (getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    return 2 * weights * length + 2 * cfg.num_hidden_layers * length * length * width


def memory(model_spec: str, length: int, runs: int = 3) -> dict[str, Any]:
    """Peak memory growth while scoring one document (devices.PeakMemory: on a CPU the kernel's
    resident-set high-water mark), each path in `runs` fresh processes, the median taken: on a
    CPU the chunked path's peak varies run to run with the allocator (560-890 MB at 8k on
    SmolLM2 in six runs, most at 560), the labels path's does not."""
    peaks: dict[str, list[int]] = {"chunked": [], "labels": []}
    for _ in range(runs):
        for path in peaks:
            probe = [sys.executable, "-m", f"{PROBES}.probe_memory", model_spec, str(length), path]
            r = subprocess.run(probe, capture_output=True, text=True)
            if r.returncode:
                raise RuntimeError(f"memory probe failed: {r.stderr[-500:]}")
            peak, device = r.stdout.strip().splitlines()[-1].split("\t")
            peaks[path].append(max(int(peak), 4096))
    out = {path: int(statistics.median(p)) for path, p in peaks.items()}
    return {"memory": out["chunked"] / out["labels"], "peak_chunked": out["chunked"],
            "peak_labels": out["labels"], "runs": peaks, "length": length, "device": device,
            "measure": "torch.cuda.max_memory_allocated" if device != _cpu_name() else "RSS"}


def _cpu_name() -> str:
    from longrope.objectives.devices import device_name

    return device_name("cpu")


def cost_estimate(model_spec: str, length: int, docs: int = 5) -> dict[str, Any]:
    """Seconds and peak memory of one document forward; projected paper-default search time."""
    r = subprocess.run([sys.executable, "-m", f"{PROBES}.probe_cost", model_spec, str(length)],
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"cost probe failed: {r.stderr[-500:]}")
    secs, peak, device = r.stdout.strip().splitlines()[-1].split("\t")
    secs, peak = float(secs), float(peak)
    per_eval = secs * docs
    return {"model": model_spec, "length": length, "seconds_per_doc": secs, "seconds_per_eval": per_eval,
            "peak_rss_bytes": peak, "device": device,
            "full_search_hours": {n: 1344 * per_eval / n / 3600 for n in (1, 8, 64)}}
