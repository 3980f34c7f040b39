"""The shipped tiny-sotu retrieves a pass key anywhere in its trained window (128 tokens) and
loses it at 8x with unscaled RoPE: the bed a context-extension search has to repair. Scored on
held-out addresses by the runtime's own needle scorer, so a broken model or a broken scorer
(the answer misaligned, BOS doubled, the key cut off) fails here."""

import pytest

from longrope.objectives.specs import ObjectiveSpec
from longrope.objectives.workers import Evaluator


@pytest.fixture(scope="module")
def evaluator():
    return Evaluator(ObjectiveSpec.of("builtin:tiny-sotu", threads=2, heldout_docs=20, kind="needle",
                                      depths=10, per_depth=4, seed=7))


def test_passkey_at_the_trained_length_is_at_least_95_percent(evaluator):
    ev = evaluator.evaluate(None, 128, pool="heldout")
    assert ev.ok and len(evaluator.needle_samples(128, "heldout")) == 40
    assert ev.extra["passkey"] >= 0.95, ev.extra["by_depth"]
    assert min(ev.extra["by_depth"].values()) >= 0.75, ev.extra["by_depth"]  # every depth, 4 keys each


def test_passkey_at_8x_with_plain_rope_is_low(evaluator):
    ev = evaluator.evaluate(None, 1024, pool="heldout")
    assert ev.ok and ev.extra["passkey"] <= 0.3, ev.extra["by_depth"]
