"""`longrope eval`: perplexity, needle perplexity or pass-key accuracy per method and length."""

from __future__ import annotations

import json
import sys
from typing import Any

from longrope.spaces import UserError

from .methods import check_method, deployed_n_hat
from .perplexity import stride_span
from .specs import ObjectiveSpec
from .workers import make_evaluator


def parse_lengths(text: str) -> list[int]:
    try:
        lengths = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--lengths must be comma-separated integers, got {text!r}") from None
    if not lengths or any(n < 2 for n in lengths):
        raise UserError(f"--lengths must be integers >= 2, got {text!r}")
    return sorted(set(lengths))  # a length given twice is scored once (its column is one)


TASKS = ("ppl", "needle", "passkey")


def run_eval(spec: ObjectiveSpec, lengths: list[int], methods: list[str], pool: str,
             progress: bool = True, task: str = "ppl",
             stride: int | None = None) -> dict[str, dict[int, Any]]:
    """{method: {length: Evaluation}}; all methods resolved before any scoring. Tasks `needle`
    and `passkey` score the same needle samples (spec.task): the Evaluation's ppl is the needle
    perplexity, extra["passkey"] the retrieval accuracy, extra["by_depth"] it per depth.
    stride (ppl only): sliding-window perplexity, windows of each length advancing by `stride`
    over each document's first 2·length - stride tokens; None: the first `length` tokens, one pass."""
    from tqdm import tqdm

    if task not in TASKS:
        raise UserError(f"--task {task!r}; choose one of {', '.join(TASKS)}")
    check_stride(stride, lengths, task)
    for m in methods:
        check_method(m)
        if (n_hat := deployed_n_hat(m)) is not None:
            print(f"note: {m}: n̂ = {n_hat} is applied here (longrope's rotary patch); transformers, vLLM "
                  "and llama.cpp ignore it, so a deployed model scores as with n̂ = 0", file=sys.stderr)
    ev = make_evaluator(spec)
    ev.check_pool(lengths if stride is None else [stride_span(n, stride) for n in lengths], pool)
    plan = [(m, n, ev.method(m, n)) for m in methods for n in lengths]
    out: dict[str, dict[int, Any]] = {m: {} for m in methods}
    bar = tqdm(plan, desc="eval", unit="run", disable=not progress, file=sys.stderr)
    kind = "ppl" if task == "ppl" else "needle"
    for m, n, f in bar:
        bar.set_postfix_str(f"{m} @ {n}")
        out[m][n] = ev.evaluate(f, n, pool=pool, kind=kind, **({} if stride is None else {"stride": stride}))
    return out


def check_stride(stride: int | None, lengths: list[int], task: str) -> None:
    if stride is None:
        return
    if task != "ppl":
        raise UserError(f"--stride goes with --task ppl (document perplexity), not {task}")
    if stride < 1 or stride > min(lengths):
        raise UserError(f"--stride must be between 1 and the shortest length ({min(lengths)}), got {stride}")


def value(e: Any, task: str, tail: bool = False) -> Any:
    """What a task reports of one Evaluation: ppl (with its tail), needle ppl, or accuracy."""
    if not e.ok:
        return None
    if task == "passkey":
        return e.extra["passkey"]
    if task == "ppl" and tail:
        return {"ppl": e.ppl, "tail": e.extra.get("tail_ppl")}
    return e.ppl


def render(results: dict[str, dict[int, Any]], tail: bool, task: str = "ppl", by_depth: bool = False) -> str:
    lengths = sorted({n for r in results.values() for n in r})
    if by_depth:
        return "\n\n".join(_depth_table(m, r, lengths, task) for m, r in results.items())
    head = "| method | " + " | ".join(str(n) for n in lengths) + " |"
    lines = [head, "|" + "---|" * (len(lengths) + 1)]
    for m, r in results.items():
        cells = []
        for n in lengths:
            e = r[n]
            if not e.ok:
                cells.append(f"failed ({e.reason})")
            elif task == "passkey":
                cells.append(f"{e.extra['passkey']:.2f}")
            else:
                tail_s = f" ({e.extra['tail_ppl']:.2f})" if tail and task == "ppl" else ""
                cells.append(f"{e.ppl:.2f}{tail_s}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# What --depths breaks down per task: (Evaluation.extra key, the table's name for it)
BY_DEPTH = {"passkey": ("by_depth", "pass-key accuracy"), "needle": ("ppl_by_depth", "needle perplexity")}


def _depth_table(method: str, r: dict[int, Any], lengths: list[int], task: str) -> str:
    key, what = BY_DEPTH[task]
    depths = sorted({d for e in r.values() if e.ok for d in e.extra[key]})
    lines = [f"{method}: {what} by depth (rows) and length (columns)", "",
             "| depth | " + " | ".join(str(n) for n in lengths) + " |", "|" + "---|" * (len(lengths) + 1)]
    for d in depths:
        cells = [f"{r[n].extra[key][d]:.2f}" if r[n].ok else "failed" for n in lengths]
        lines.append(f"| {d:.2f} | " + " | ".join(cells) + " |")
    if not depths:  # every length failed: say why, as the table without --depths does
        lines.append("| all | " + " | ".join(f"failed ({r[n].reason})" for n in lengths) + " |")
    else:  # the aggregate a search ranks by, over every depth
        value = (lambda e: e.extra["passkey"]) if task == "passkey" else (lambda e: e.ppl)
        lines.append("| all | " + " | ".join(f"{value(r[n]):.2f}" if r[n].ok else "failed" for n in lengths)
                     + " |")
    return "\n".join(lines)


def as_json(results: dict[str, dict[int, Any]], tail: bool, task: str = "ppl", by_depth: bool = False) -> str:
    """{"method": {"length": value}} (value: perplexity, needle perplexity or accuracy);
    by depth: {"method": {"length": {"depth": value}}} (the task's: accuracy or needle perplexity)."""
    if by_depth:
        key = BY_DEPTH[task][0]
        return json.dumps({m: {str(n): ({str(d): a for d, a in e.extra[key].items()} if e.ok else None)
                               for n, e in r.items()} for m, r in results.items()})
    return json.dumps({m: {str(n): value(e, task, tail) for n, e in r.items()} for m, r in results.items()})


def plot_depths(results: dict[str, dict[int, Any]], path: str) -> None:
    """A heatmap per method: pass-key accuracy by depth (rows) and length (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({n for r in results.values() for n in r})
    methods = [m for m, r in results.items() if any(e.ok for e in r.values())]  # a failed one has no depths
    if not methods:
        raise UserError(f"no plot {path}: every evaluation failed (the table says why)")
    width = 2.2 + 1.6 * len(methods) * max(1, len(lengths) / 3)
    fig, axes = plt.subplots(1, len(methods), figsize=(width, 3.6), squeeze=False)
    for ax, m in zip(axes[0], methods, strict=True):
        r = results[m]
        depths = sorted({d for e in r.values() if e.ok for d in e.extra["by_depth"]})
        grid = [[r[n].extra["by_depth"].get(d, float("nan")) if r[n].ok else float("nan") for n in lengths]
                for d in depths]
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], rotation=45)
        ax.set_yticks(range(len(depths)), [f"{d:.1f}" for d in depths])
        ax.set_title(m)
    axes[0][0].set_ylabel("depth of the key")
    fig.colorbar(im, ax=axes[0].tolist(), label="pass-key accuracy")
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise UserError(f"cannot write the plot {path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
