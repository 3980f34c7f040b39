"""BestRecord: the on-disk form of best/<kind>-<L>.json, its round trip and its one-line errors."""

import dataclasses
import json
from pathlib import Path

import pytest
from search_helpers import run_small

from longrope.runs import BestRecord, Run
from longrope.spaces import RescaleFactors, UserError

# Written by the driver before BestRecord existed: old runs must keep loading and exporting.
FROZEN = Path(__file__).parent / "frozen" / "best-long-256.json"


def test_frozen_file_round_trips_byte_for_byte():
    record = BestRecord.load(FROZEN)
    assert record.to_json() == FROZEN.read_text()
    assert (record.kind, record.target_length, record.slot, record.heldout_ppl) == ("long", 256, (0, 1),
                                                                                     8.084058027251256)
    assert list(json.loads(record.to_json())) == [f.name for f in dataclasses.fields(BestRecord)]


def test_factors_and_equality():
    record = BestRecord.load(FROZEN)
    assert record.factors == RescaleFactors(record.lambdas, record.n_hat, record.mscale)
    assert BestRecord.from_dict(json.loads(record.to_json())) == record
    assert hash(record) == hash(dataclasses.replace(record))


def test_a_run_writes_and_reads_records(tmp_path):
    run, _ = run_small(tmp_path, short="[32]", iterations=1)
    long, short = run.best("long"), run.best("short", 32)
    assert (long.kind, long.target_length, short.kind, short.target_length) == ("long", 256, "short", 32)
    assert run.bests("long") == {256: long} and BestRecord.load(run.best_path("long", 256)) == long
    assert long.search_ppl > 1 and long.heldout_ppl > 1 and long.sampler == "longrope"
    with pytest.raises(UserError, match=r"no long result for length 512 \(it has: 256\)"):
        run.best("long", 512)
    empty = Run.create(tmp_path / "empty", "[model]\n")
    assert empty.best("long") is None and empty.bests("short") == {}


def test_a_resumed_stage_rewrites_a_best_file_left_one_best_behind(tmp_path):
    """A driver killed between the tell of a new best and its write_best left the best file on
    an older trial; before, it stayed so until the resumed stage ended (hours on a GPU)."""
    from search_helpers import small_cfg

    from longrope.objectives.specs import ObjectiveSpec
    from longrope.search.backends import InProcessBackend
    from longrope.search.driver import Driver
    from longrope.search.proposers import best_trial

    run, _ = run_small(tmp_path, iterations=1)
    (study,) = run.studies()
    best = best_trial(study)
    done = best.number, best.value, run.best("long", 256).heldout_ppl
    older = next(t for t in study.get_trials() if t.state.name == "COMPLETE" and t.number != best.number)
    run.write_best(dataclasses.replace(run.best("long", 256), trial=older.number, search_ppl=older.value))
    cfg, _ = small_cfg(iterations=2)  # the stage goes on: its end is a generation away
    backend = InProcessBackend(ObjectiveSpec.of("synthetic"))

    def interrupted(job):
        raise KeyboardInterrupt

    backend.submit = interrupted
    with pytest.raises(KeyboardInterrupt):
        Driver(cfg, run, progress=False, backend=backend).run_all()
    again = run.best("long", 256)
    assert (again.trial, again.search_ppl, again.heldout_ppl) == done  # held-out: the cached score


def one_line_error(path, match):
    with pytest.raises(UserError, match=match) as e:
        BestRecord.load(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_missing_truncated_and_non_json_files_are_one_line(tmp_path):
    one_line_error(tmp_path / "nope.json", "does not exist")
    truncated = tmp_path / "truncated.json"
    truncated.write_text(FROZEN.read_text()[:200])
    one_line_error(truncated, "is not valid JSON")
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\x00\xff not json")
    one_line_error(garbage, "cannot read|is not valid JSON")
    (tmp_path / "list.json").write_text("[1, 2]")
    one_line_error(tmp_path / "list.json", "must be a JSON object")


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(BestRecord)])
def test_each_missing_field_is_named(tmp_path, field):
    d = json.loads(FROZEN.read_text())
    del d[field]
    path = tmp_path / "best.json"
    path.write_text(json.dumps(d))
    one_line_error(path, f"missing field {field}$")


@pytest.mark.parametrize("field,value", [("lambdas", "1,2"), ("lambdas", []), ("n_hat", 1.5),
                                         ("target_length", "256"), ("slot", [0]), ("kind", "medium"),
                                         ("search_ppl", None), ("evals", True)])
def test_a_wrong_type_is_named(tmp_path, field, value):
    d = json.loads(FROZEN.read_text())
    d[field] = value
    path = tmp_path / "best.json"
    path.write_text(json.dumps(d))
    one_line_error(path, f"field {field} must be")


def test_a_boolean_is_not_a_number_in_a_best_record():
    from longrope.runs.best import BestRecord
    from longrope.spaces import UserError

    good = dict(kind="long", target_length=256, original_length=64, lambdas=[1.0] * 4, n_hat=0, mscale=1.1,
                search_ppl=3.0, heldout_ppl=None, evals=1, trial=0, slot=[0, 0], config_hash="x", model="m",
                data="d", sampler="longrope", seed=0, rotary_dim=8, base=1e4)
    BestRecord.from_dict(good)
    with pytest.raises(UserError, match="field mscale must be a number"):
        BestRecord.from_dict({**good, "mscale": True})
