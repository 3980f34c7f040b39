"""`longrope check`: what this machine has, and whether it scores candidates as it should.

Run it first on a new GPU node or cluster: it names torch, CUDA, the GPUs, flash-attn and
(with --address) the Ray cluster's resources, then runs objectives/selfcheck.py's self-test
on every device it sees (the CPU and each GPU): rotary parity with transformers in the
dtype and attention a search would use (a run's config or directory: its own), one
evaluation with its time per 1k tokens, the scorer's head NLL eager against torch.compile
(equal to float32 rounding; the time of each), and for a dtype other than float32 the rank
agreement of fixed candidates with float32. Exit 0 when every check
holds, 1 when one does not (the text says which), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import platform
import sys
from typing import Any

from longrope.objectives.specs import ATTENTIONS, DTYPES
from longrope.spaces import UserError

EMBEDDED = "builtin:tiny-sotu"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Versions, CUDA and its GPUs, flash-attn: what a search here could use."""
    import torch

    gpus = [{"index": i, "name": torch.cuda.get_device_name(i),
             "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
            for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": _version("transformers"), "ray": _version("ray"),
            "longrope-search": _version("longrope-search"),
            "cuda": {"available": torch.cuda.is_available(), "version": torch.version.cuda, "gpus": gpus},
            "bf16_supported": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
            "flash_attn": _flash_attn()}


def _flash_attn() -> str | None:
    """flash-attn's version when it imports; "broken: ..." when installed but its import fails (a
    build against another torch or CUDA: every worker asked for flash_attention_2 would fail to
    load); None when it is not installed."""
    if importlib.util.find_spec("flash_attn") is None:
        return None
    try:
        import flash_attn  # noqa: F401
    except Exception as e:  # ImportError, or an OSError from its CUDA extension
        return f"broken: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
    return _version("flash-attn") or "installed"


def ray_resources(address: str) -> dict[str, Any]:
    """Join the cluster at `address` and read what it declares (nodes, CPUs, GPUs)."""
    import ray

    from longrope.search.cluster import init_ray

    joined = not ray.is_initialized()  # a Ray this process already runs is left running
    init_ray(address)
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        total = ray.cluster_resources()
        return {"address": address, "nodes": len(nodes), "CPU": total.get("CPU", 0),
                "GPU": total.get("GPU", 0),
                "per_node": [{"ip": n["NodeManagerAddress"], "CPU": n["Resources"].get("CPU", 0),
                              "GPU": n["Resources"].get("GPU", 0)} for n in nodes]}
    finally:
        if joined:
            ray.shutdown()


def cmd_check(args: argparse.Namespace) -> int:
    """Environment, then the self-test on every device; exit 1 if a check fails."""
    import torch

    from longrope.objectives.selfcheck import self_test

    model, dtype = args.model or EMBEDDED, args.dtype or "auto"
    named = "--device"  # where the device came from, for its refusals
    attention, tokenizer = args.attention, args.tokenizer
    if args.config:
        from pathlib import Path

        from longrope.search.config import load

        run_config = Path(args.config) / "config.toml"  # a run directory: its frozen config
        if Path(args.config).is_dir() and not run_config.is_file():
            hint = " (a model folder: --model DIR)" if (Path(args.config) / "config.json").is_file() else ""
            raise UserError(f"{args.config} is a folder but not a run directory (no config.toml){hint}")
        cfg = load(run_config if run_config.is_file() else args.config)
        model, dtype = args.model or cfg.model.path, args.dtype or cfg.model.dtype  # what was given wins
        attention, tokenizer = attention or cfg.model.attention, tokenizer or cfg.model.tokenizer
        if not args.device and cfg.model.device != "auto":  # the run's device: a search refuses it too
            args.device, named = cfg.model.device, "model.device ="
    if args.device and not (args.device == "cpu" or args.device.split(":")[0] == "cuda"):
        raise UserError(f"{named} {args.device!r}: use cpu, cuda or cuda:N")
    if args.device and args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{named} {args.device}: torch sees no GPU on this machine")
    index = args.device.split(":")[1] if args.device and ":" in args.device else "0"
    if args.device and args.device.startswith("cuda") and not (index.isdigit()
                                                               and int(index) < torch.cuda.device_count()):
        raise UserError(f"{named} {args.device}: torch sees {torch.cuda.device_count()} GPU(s), "
                        f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    out = environment()
    out["ray_cluster"] = ray_resources(args.address) if args.address else None
    devices = [args.device] if args.device else \
        ["cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]  # 0 without CUDA
    out["self_test"] = []
    for dev in devices:
        if not args.json:
            print(f"self-test on {dev} ...", file=sys.stderr)
        if dev.startswith("cuda"):  # each GPU and dtype compiles the head anew (headnll.py): past
            torch._dynamo.reset()  # dynamo's 8 recompiles it would run eagerly, timed as compiled
        try:
            out["self_test"].append(self_test(model, dev, dtype, attention=attention or "sdpa",
                                              tokenizer=tokenizer))
        except UserError:
            raise  # the model or its files: the same on every device
        except Exception as e:  # this device's fault (out of memory, a driver error): the others still run
            why = (str(e).strip().splitlines() or [""])[0][:300]
            out["self_test"].append({"device": dev, "ok": False, "error": f"{type(e).__name__}: {why}"})
    out["ok"] = all(t["ok"] for t in out["self_test"])
    print(json.dumps(_finite(out), indent=1, allow_nan=False) if args.json else render(out))
    return 0 if out["ok"] else 1


def _finite(x: Any) -> Any:
    """`x` with inf and NaN as null: JSON has no such numbers (Python's Infinity is not JSON, and a
    failed check, when the JSON matters most, is where they appear)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def render(out: dict[str, Any]) -> str:
    cuda = out["cuda"]
    lines = [f"python {out['python']}, torch {out['torch']}, transformers {out['transformers']}, "
             f"ray {out['ray']}, longrope-search {out['longrope-search']}",
             f"CUDA: {cuda['version'] or 'none'}, {'available' if cuda['available'] else 'no GPU seen'}"]
    lines += [f"  GPU {g['index']}: {g['name']}, {g['memory_gib']} GiB" for g in cuda["gpus"]]
    lines.append(f"flash-attn: {out['flash_attn'] or 'not installed'}")
    if out["ray_cluster"]:
        r = out["ray_cluster"]
        lines.append(f"Ray at {r['address']}: {r['nodes']} nodes, {r['CPU']:g} CPUs, {r['GPU']:g} GPUs")
    for t in out["self_test"]:
        if "error" in t:
            lines += ["", f"{t['device']}: the self-test stopped: {t['error']} FAILED"]
            continue
        p, e, k, n = t["rotary_parity"], t["evaluation"], t["rank_check"], t["nll"]
        lines += ["", f"{t['device']}: {t['name']}, {t['model']} in {t['dtype']}, "
                  f"{t['attention']} attention:",
                  f"  rotary parity: λ = 1 bit-exact {_yes(p['identity_bit_exact'])}, uniform λ vs "
                  f"transformers' linear max |Δlogit| {p['linear_max_abs_diff']:.2e}, n̂ = length vs "
                  f"plain {p['n_hat_max_abs_diff']:.2e} (<= {p['tolerance']:g}); rising λ and "
                  f"mscale vs transformers' longrope: max |Δlogit| / max |logit| "
                  f"{_diff(p['longrope_max_rel_diff'])} (<= {p['longrope_tolerance']:g}) {_ok(p['ok'])}",
                  f"  evaluation at {e['length']}: ppl {e['ppl']:.3f}, {e['seconds']:.2f} s, "
                  f"{e['seconds_per_1k_tokens']:.3f} s per 1k tokens {_ok(e['ok'])}",
                  _render_nll(n)]
        lines.append("  rank check: float32 itself" if k is None else
                     f"  rank check vs float32 ({k['candidates']} candidates at {k['length']}): Spearman "
                     f"{k['spearman']:.3f} (>= {k['min_spearman']}), same best {_yes(k['same_best'])}, "
                     f"median |Δppl| {k['median_rel_diff']:.2%} {_ok(k['ok'])}")
    lines += ["", "all checks passed" if out["ok"] else "SOME CHECKS FAILED (see FAILED above)"]
    return "\n".join(lines)


def _render_nll(n: dict[str, Any]) -> str:
    head = f"  head NLL at {n['length']} (nll = auto is {n['auto']} here): eager {n['eager_seconds']:.3f} s"
    if not n["compiled"]:
        return f"{head}; compiled unavailable ({n['reason']}): scoring uses eager"
    return (f"{head}, compiled {n['compiled_seconds']:.3f} s, mean NLL rel. diff {n['mean_rel_diff']:.1e} "
            f"(<= {n['tolerance']:g}), max |ΔNLL| {n['max_abs_diff']:.1e} {_ok(n['ok'])}"
            + ("" if n["ok"] else ' (search and eval with [model] nll = "eager" / --nll eager)'))


def _diff(d: float | str) -> str:
    return f"{d:.2e}" if isinstance(d, float) else f"({d})"


def _yes(b: bool) -> str:
    return "yes" if b else "NO"


def _ok(b: bool) -> str:
    return "ok" if b else "FAILED"


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("check", help="this machine's torch/CUDA/GPUs/Ray, and a self-test on each device",
                       description=__doc__.split("\n\n", 1)[1].replace("\n", " "))
    c.add_argument("config", nargs="?", help="a run config, or a run directory (its frozen config): "
                   "check its model in its dtype, attention and tokenizer")
    c.add_argument("--model", help=f"model to self-test (default: the config's, else {EMBEDDED}, "
                   "which ships with the package)")
    c.add_argument("--dtype", choices=DTYPES,
                   help="dtype of the self-test (default: the config's, else auto: bfloat16 on a GPU, "
                   "float16 on one before Ampere (V100, T4), float32 on a CPU)")
    c.add_argument("--attention", choices=ATTENTIONS, help="attention of the self-test (default: the "
                   "config's, else sdpa); flash_attention_2 is tested where a search will run it")
    c.add_argument("--tokenizer", default="", help="a folder holding the tokenizer, for a model folder "
                   "without one (default: the config's, else the model's own)")
    c.add_argument("--device", help="one device to test (cpu, cuda, cuda:1); default: every one seen")
    c.add_argument("--address", help="a Ray cluster to read resources from (auto, ray://host:10001)")
    c.add_argument("--json", action="store_true", help="one JSON object instead of text")
    c.set_defaults(func=cmd_check)
