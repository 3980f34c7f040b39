"""How long an evaluation may run on a Ray worker before the worker is taken for hung.

A GPU that hangs (an Xid error, a process stuck inside the driver) raises nothing: the
evaluation never ends, and without a limit the search would wait on it forever without a
word (a long evaluation is not a wait, so no note says so either). Every candidate of one
length and document pool costs about the same (the factors change no shape; an early abort
only shortens it), so one running STALL_FACTOR times the median of those scored whole (an
early abort's time would lower it: the candidates that do not abort, the best, would be taken
for hung), and at least STALL_SECONDS, has a hung worker: the backend replaces it and runs the
candidate again on another, as after a death (two record it failed; deaths with nothing scored
between them, as on a cluster whose every GPU hangs, stop the run: cluster.DeathStreak).
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from typing import Any

STALL_FACTOR = 10.0  # an evaluation this many times the median of its kind has hung
STALL_SECONDS = 600.0  # and never under this: a slow node, a cold cache, a shared GPU are not hangs
MIN_SEEN = 3  # evaluations of a kind finished before their median sets a limit


class WorkerStalled(Exception):
    """An evaluation past its limit: its worker is replaced like a dead one."""


class StallWatch:
    """When each evaluation in flight started, and how long the finished ones of its kind took."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.since: dict[Any, tuple[float, Any]] = {}  # ref -> (start, kind)
        self.took: dict[Any, list[float]] = defaultdict(list)  # kind -> seconds of the finished

    def start(self, ref: Any, kind: Any) -> None:
        self.since[ref] = (self.clock(), kind)

    def end(self, ref: Any, whole: bool = True) -> None:
        """`ref` is no longer in flight; `whole`: it scored every document or sample (not aborted
        early, not dead), so its time counts."""
        started, kind = self.since.pop(ref)
        if whole:
            self.took[kind].append(self.clock() - started)

    def limit(self, kind: Any) -> float | None:
        took = self.took.get(kind, ())
        return max(STALL_FACTOR * statistics.median(took), STALL_SECONDS) if len(took) >= MIN_SEEN else None

    def wait(self, longest: float) -> float:
        """How long to wait for news: until the first evaluation in flight passes its limit (and a
        moment more), at most `longest`. A hung GPU is then found on time, not at the next news."""
        now, due = self.clock(), longest
        for started, kind in self.since.values():
            if (limit := self.limit(kind)) is not None:
                due = min(due, started + limit - now + 0.05)
        return max(due, 0.0)

    def stalled(self, besides: Any = ()) -> list[tuple[Any, WorkerStalled]]:
        """The refs in flight past their limit (other than `besides`, just answered), each with the
        error that says so."""
        now, out, answered = self.clock(), [], set(besides)
        for ref, (started, kind) in self.since.items():
            limit = self.limit(kind)
            if ref not in answered and limit is not None and now - started > limit:
                out.append((ref, WorkerStalled(
                    f"its evaluation ran {now - started:.0f} s, over {limit:.0f} s ({STALL_FACTOR:g}x the "
                    f"median of {len(self.took[kind])} alike, at least {STALL_SECONDS:g} s): taken for a "
                    "hung GPU")))
        return out
