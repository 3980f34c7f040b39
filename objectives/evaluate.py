"""`longrope eval`: perplexity per method and length, as a table or JSON."""

from __future__ import annotations

import json
import sys
from typing import Any

from longrope.spaces import UserError

from .methods import check_method, method_factors
from .workers import ObjectiveSpec, make_evaluator


def parse_lengths(text: str) -> list[int]:
    try:
        lengths = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--lengths must be comma-separated integers, got {text!r}") from None
    if not lengths or any(n < 2 for n in lengths):
        raise UserError(f"--lengths must be integers >= 2, got {text!r}")
    return lengths


def run_eval(spec: ObjectiveSpec, lengths: list[int], methods: list[str], pool: str,
             progress: bool = True) -> dict[str, dict[int, Any]]:
    """{method: {length: Evaluation}}; all methods resolved before any scoring."""
    from tqdm import tqdm

    for m in methods:
        check_method(m)
    ev = make_evaluator(spec)
    ev.check_pool(lengths, pool)
    plan = [(m, n, method_factors(m, ev.geometry, n)) for m in methods for n in lengths]
    out: dict[str, dict[int, Any]] = {m: {} for m in methods}
    bar = tqdm(plan, desc="eval", unit="run", disable=not progress, file=sys.stderr)
    for m, n, f in bar:
        bar.set_postfix_str(f"{m} @ {n}")
        out[m][n] = ev.evaluate(f, n, pool=pool)
    return out


def render(results: dict[str, dict[int, Any]], tail: bool) -> str:
    lengths = sorted({n for r in results.values() for n in r})
    head = "| method | " + " | ".join(str(n) for n in lengths) + " |"
    lines = [head, "|" + "---|" * (len(lengths) + 1)]
    for m, r in results.items():
        cells = []
        for n in lengths:
            e = r[n]
            cell = f"{e.ppl:.2f}" if e.ok else f"failed ({e.reason})"
            if tail and e.ok:
                cell += f" ({e.extra['tail_ppl']:.2f})"
            cells.append(cell)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def as_json(results: dict[str, dict[int, Any]], tail: bool) -> str:
    def value(e):
        return {"ppl": e.ppl, "tail": e.extra.get("tail_ppl")} if tail else e.ppl

    return json.dumps({m: {str(n): value(e) for n, e in r.items()} for m, r in results.items()})
