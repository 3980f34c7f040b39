"""What users would pick instead (issue 17): every way past the trained length, side by side on
the same held-out text. On builtin:tiny-sotu: plain RoPE, PI, NTK, YaRN, dynamic NTK,
LM-Infinite and factors searched on the needle objective; on its twin builtin:tiny-sotu-alibi
(same body, data, steps and seed, ALiBi instead of RoPE): the model as it is. Four measures per
length: perplexity of each document's first L tokens (one pass), sliding-window perplexity
(windows of L advancing by L/2: every token after the first window sees at least L/2 tokens of
context), needle perplexity and pass-key accuracy."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from . import retrieval

ROPE_ROWS = ("none", "pi", "ntk", "yarn", "dynamic_ntk", "lm_infinite")
MEASURES = ("ppl", "sliding", "needle", "passkey")
L0 = 128


def measure(ev, factors, length: int) -> dict[str, float]:
    """retrieval.measure's three numbers and the sliding-window perplexity."""
    return {**retrieval.measure(ev, factors, length),
            "sliding": ev.evaluate(factors, length, pool="heldout", kind="ppl", stride=length // 2).ppl}


def compare(workdir: Path, lengths: list[int], budget: int, seed: int = 0,
            keys: int = retrieval.SEARCH_KEYS) -> dict[str, Any]:
    """{length: {row: {measure: value}}}. The searched row: one needle-objective search per
    length beyond L0 (`budget` evaluations, `seed`); at L0 and below it is `none` (nothing to
    stretch)."""
    rope = retrieval.heldout_evaluator(keys=keys)
    twin = retrieval.heldout_evaluator("builtin:tiny-sotu-alibi", keys)
    out: dict[str, Any] = {}
    for n in lengths:
        row = {m: measure(rope, rope.method(m, n), n) for m in ROPE_ROWS}
        if n > L0:
            found = retrieval.searched(workdir, "compare", n, [seed], budget, keys=keys)[0]
            row["searched"] = measure(rope, found, n)
        else:
            row["searched"] = dict(row["none"])
        row["alibi"] = measure(twin, twin.method("none", n), n)
        out[str(n)] = row
    return out


def winners(r: dict[str, Any]) -> list[str]:
    """Which row wins each measure at each length (lowest perplexity, highest pass-key)."""
    lines = []
    for k in MEASURES:
        best = []
        for n, row in r.items():
            pick = max if k == "passkey" else min
            w = pick(row, key=lambda m, k=k: row[m][k])
            best.append(f"{int(n) // L0}x {w} ({row[w][k]:.2f})")
        lines.append(f"best {k}: " + ", ".join(best))
    return lines


def render(r: dict[str, Any], budget: int | None = None,
           heldout: str = retrieval.heldout_words()) -> list[str]:
    lengths = list(r)
    head = " | ".join(f"{int(n) // L0}x ({n})" for n in lengths)
    lines = ["", f"every method on the same held-out text ({heldout}); each cell: perplexity / "
             f"sliding-window perplexity (stride L/2) / needle perplexity / pass-key accuracy; searched: "
             f"needle objective, {budget} evaluations, seed 0 (= none at 1x); "
             "alibi: builtin:tiny-sotu-alibi:",
             "", f"| method | {head} |", "|---|" + "---|" * len(lengths)]
    for m in r[lengths[0]]:
        cells = [" / ".join(_fmt(r[n][m][k], k) for k in MEASURES) for n in lengths]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines + [""] + winners(r)


def _fmt(v: float, k: str) -> str:
    if not math.isfinite(v):
        return "inf"
    return f"{v:.2f}" if k == "passkey" or v < 100 else f"{v:.0f}"


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [int(n) for n in r]
    titles = {"ppl": "perplexity (first L tokens)", "sliding": "sliding-window perplexity (stride L/2)",
              "needle": "needle perplexity", "passkey": "pass-key accuracy"}
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for ax, k in zip(axes, MEASURES, strict=True):
        for m in r[str(lengths[0])]:
            ys = [r[str(n)][m][k] for n in lengths]
            ax.plot(lengths, ys, marker="o", label=m, lw=2.2 if m in ("searched", "alibi") else 1.2)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [f"{n // L0}x" for n in lengths])
        if k != "passkey":
            ax.set_yscale("log")
        ax.set_title(titles[k])
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
