"""The demo's search beats PI, NTK and YaRN on held-out text; the bench's quick table is complete."""

import json
import math

import pytest

from longrope.search.cli import main
from longrope.search.cli.bench import (
    GOALS,
    SECTIONS,
    exact_ceiling,
    finite_figures,
    render,
    run_bench,
    summarize,
)
from longrope.search.cli.bench.quality import cutoff_ceiling
from longrope.spaces import UserError


def test_demo_beats_every_baseline_on_heldout(tmp_path, capsys):
    assert main(["demo", "--run-dir", str(tmp_path / "demo"), "--json", "--max-evals", "48"]) == 0
    out = json.loads(capsys.readouterr().out)  # stdout holds exactly one JSON object
    assert set(out) >= {"target", "evals", "heldout", "export", "needle", "passkey", "objective"}
    assert set(out["passkey"]) == set(out["needle"]) == set(out["heldout"])
    assert all(0 <= a <= 1 for a in out["passkey"].values()) and all(v > 1 for v in out["needle"].values())
    held = out["heldout"]
    assert out["target"] == 1024 and out["evals"] == 2 * 48
    for base in ("none", "pi", "ntk", "yarn"):
        assert held["searched"] < held[base], held
    patch = json.loads(open(out["export"]).read())
    assert len(patch["rope_scaling"]["long_factor"]) == 32
    assert (tmp_path / "demo" / "export" / "demo-ppl.png").stat().st_size > 1000


def test_bench_quick_table_shape(tmp_path, monkeypatch, capsys):
    r = run_bench(quick=True, out_dir=tmp_path)
    log = capsys.readouterr().err  # a line as each section starts and ends, and one per search
    for section in SECTIONS:
        assert f" {section} ...\n" in log and f" {section} done in " in log
    assert "  search r-needle-512-0: " in log
    assert set(r["summary"]) == set(GOALS) - {"scale_out_real"}
    assert finite_figures(r) and all(v >= 0 for v in r["summary"].values())
    assert 0 <= r["early_abort"]["early_abort_saved"] < 1 and r["speed"]["overhead"] > 0
    assert r["early_abort"]["same_best"] is True  # an exact abort never changes the result
    table = render(r)
    assert table.count("\n| ") >= len(r["summary"]) and "| longrope |" in table
    assert math.isfinite(r["cost"]["seconds_per_eval"])
    assert (tmp_path / "bench.png").stat().st_size > 1000 and json.loads((tmp_path / "bench.json").read_text())
    ea = r["early_abort"]
    assert 0 <= ea["exact_ceiling"] <= ea["above_cutoff"] <= 1 and "end_to_end_synthetic" in r["scale"]
    row = r["retrieval"]["512"]  # LongRoPE2's Table 6 rows: methods, searched on ppl and on needle
    assert set(row) == {"none", "pi", "ntk", "yarn", "dynamic_ntk", "searched_ppl", "searched_needle"}
    assert all(0 <= a <= 1 for v in row.values() for a in v["passkey"]) and "retrieval at 512" in table
    pr = r["pruning"]  # the pruners side by side: none is its own reference, exact keeps the best
    assert pr["none"]["tokens_ratio"] == 1 and pr["exact"]["tokens_ratio"] <= 1 and "| wilcoxon |" in table
    assert (tmp_path / "pruning.png").stat().st_size > 1000  # quality per token, one point per search
    assert 0 < pr["cutoff_ceiling"][0] <= 1 and "ceiling for any rule against the parent cut-off" in table
    pp = r["pruning_paper"]  # the same at a given search shape: 8 + 1 generation of 4 children, 2 documents
    assert pp["pruners"] == ["none", "wilcoxon"] and pp["none"]["tokens"] == [(8 + 1 * 4) * 2 * 1024]
    assert "pruners at 1024 (population 8, 4 parents, 2 + 2 children, 12 evaluations" in table
    sq = r["samplers_paper"][512]  # the samplers at a given search shape and budget, beside the methods
    assert set(sq) == {"none", "pi", "ntk", "yarn", "dynamic_ntk", "longrope", "random"}
    assert "(the paper's search shape: population 8, 4 parents, 2 + 2 children, 12 evaluations, seed 0)" in table
    assert sq["yarn"] == r["quality"][512]["yarn"] and r["summary"]["longrope_vs_reference_paper"] > 0
    sp = r["spaces"]["512"]  # LongRoPE's space, LongRoPE2's two and the floor only; mscale on its grid
    assert set(sp) == {"longrope", "critical_dim", "critical_dim+mscale", "critical_floor"}
    assert "| critical_dim+mscale |" in table and "| critical_floor |" in table
    assert all(1 <= m <= 1.5 for m in sp["critical_dim+mscale"]["mscale"])
    cmp = r["compare"]  # issue 17: every row at each length; at L0 the searched row is none's
    assert set(cmp["128"]) == {"none", "pi", "ntk", "yarn", "dynamic_ntk", "lm_infinite", "searched", "alibi"}
    assert cmp["128"]["searched"] == cmp["128"]["none"] and cmp["256"]["alibi"]["ppl"] != cmp["256"]["none"]["ppl"]
    assert (tmp_path / "compare.png").stat().st_size > 1000 and "| alibi |" in table
    ft = r["finetune"]  # issue 16: both arms, the short-context rows and the three fine-tunes, timed
    assert set(ft["ablation"]) == {"lora+_s2", "lora+_full", "lora_s2", "lora+_s2, passkey_mix 0.25",
                                   "lora+_s2, short_mix 0.5"}
    assert "s2_time" not in ft  # timed once, by the s2_time section, whose ratio the goal line reads
    assert "| fine-tuned, short_mix 0.5 |" in table and "| (b+short) as (b), short_mix 0.5 |" in table
    assert all(v["train_seconds"] > 0 for v in ft["ablation"].values()) and 0 <= ft["b"]["passkey"] <= 1
    assert "the full recipe at 4x" in table and "| (b+pk) as (b), passkey_mix 0.25 |" in table
    assert ft["passkey_mix_same_factors"] is True  # the (b) and (b+pk) arms fine-tune with equal factors
    s2 = r["s2_time"]  # S2-Attn against full attention by length: both arms timed at each
    assert set(s2["times"]) == {"256", "512"} and all(t["s2"] > 0 and t["full"] > 0 for t in s2["times"].values())
    assert "S2-Attn fine-tune time against full attention by length" in table and "| 512 (4x) |" in table
    assert f"S2-Attn fine-tune at 2x: {s2['times']['256']['ratio']:.2f}x the time of full attention" in table
    sm = r["short_mix"]["rows"]  # the short_mix sweep: one fine-tune per mix, short steps only where mixed
    assert set(sm) == {"0.0", "0.5"} and sm["0.0"]["short_steps"] == 0 < sm["0.5"]["short_steps"]
    assert sm["0.0"]["l0_ppl"] != sm["0.5"]["l0_ppl"] and "finetune.short_mix at 2x" in table
    # --only reruns one section and keeps the rest from bench.json (speed as measured once more: the
    # figures differ from run to run, so a stand-in that tells each call's apart, in a tenth of the time)
    import itertools

    import longrope.search.cli.bench as bench

    calls = itertools.count(1)
    monkeypatch.setattr(bench, "overhead_and_flops", lambda *a: dict(r["speed"], overhead=next(calls) * 1.5))
    again = run_bench(quick=True, out_dir=tmp_path, only=["speed"])
    assert again["quality"] == json.loads(json.dumps(r["quality"])) and again["early_abort"] == r["early_abort"]
    assert again["speed"] != r["speed"] and math.isfinite(again["summary"]["overhead"])
    # an --only rerun keeps each section once measured: killed in the next, the first is in bench.json
    def killed(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "memory", killed)
    with pytest.raises(KeyboardInterrupt):
        run_bench(quick=True, out_dir=tmp_path, only=["speed", "memory"])
    kept = json.loads((tmp_path / "bench.json").read_text())
    assert kept["speed"] != json.loads(json.dumps(again["speed"])) and kept["memory"] == again["memory"]
    assert kept["quality"] == again["quality"] and kept["summary"]["overhead"] == kept["speed"]["overhead"]
    # a name given twice is one section (every section but one, and a repeat, was taken for the whole
    # bench: bench.json not read, and the summary raised KeyError on the missing one at the end)
    monkeypatch.setattr(bench, "_run_sections", lambda r, sections, *a: r.update({x: kept[x] for x in sections}))
    names = [x for x in bench.SECTIONS if x != "speed"]
    assert run_bench(quick=True, out_dir=tmp_path, only=names + names[:1])["speed"] == kept["speed"]
    with pytest.raises(UserError, match="unknown bench section 'sped'"):
        run_bench(quick=True, out_dir=tmp_path, only=["sped"])
    with pytest.raises(UserError, match="needs an earlier full bench"):
        run_bench(quick=True, out_dir=tmp_path / "empty", only=["speed"])
    assert not (tmp_path / "empty").exists()
    with pytest.raises(UserError, match="was a quick bench"):
        run_bench(quick=False, out_dir=tmp_path, only=["speed"])


def test_a_damaged_bench_json_or_an_out_that_is_a_file_is_one_line(tmp_path):
    """Tracebacks before: JSONDecodeError, AttributeError on a list, FileExistsError, NotADirectoryError."""
    for text, why in (("{bad", "cannot be read"), ("[1]", "is not a bench's results"),
                      ("{}", "is not a bench's results")):
        (tmp_path / "damaged").mkdir(exist_ok=True)
        (tmp_path / "damaged" / "bench.json").write_text(text)
        with pytest.raises(UserError, match=f"--only keeps the other sections from .*bench.json, .*{why}"):
            run_bench(quick=True, out_dir=tmp_path / "damaged", only=["speed"])
    (tmp_path / "afile").write_text("x")
    for out in ("afile", "afile/sub"):
        with pytest.raises(UserError, match=f"cannot create bench folder {tmp_path / out}: a file is in the way"):
            run_bench(quick=True, out_dir=tmp_path / out, only=list(SECTIONS))


def test_summary_compares_at_the_longest_target_even_from_json():
    row = lambda lr, yarn: {"pi": {"heldout": [90.0]}, "ntk": {"heldout": [60.0]},  # noqa: E731
                            "yarn": {"heldout": [yarn]}, "longrope": {"heldout": [lr, lr + 1, lr + 2]}}
    r = {"speed": {"overhead": 1.0, "cpu_efficiency": 0.5}, "memory": {"memory": 0.2},
         "early_abort": {"early_abort_saved": 0.0}, "scale": {"scale_out_synthetic": 1.0},
         "quality": {512: row(30.0, 40.0), 1024: row(44.0, 50.0)}}
    expect = 45.0 / 50.0  # median of the evolution at 1024 over YaRN, the best baseline there
    assert summarize(r)["longrope_vs_reference"] == expect
    assert summarize(json.loads(json.dumps(r)))["longrope_vs_reference"] == expect  # "1024" < "512" as text


def test_exact_ceiling_by_hand(tmp_path):
    import optuna

    from longrope.runs import Run

    run = Run.create(tmp_path / "r", "[search]\n")
    study = optuna.create_study(study_name="long-64", storage=run.storage())
    for v in (10.0, 20.0, 5.0, 40.0):
        study.add_trial(optuna.trial.create_trial(value=v))
    # parents = 2: the cut-off is the 2nd best seen so far; 20 comes before two are seen, 5 is below
    # the cut-off 20, and 40 is above the cut-off 10 (2nd best of 10, 20, 5)
    got = exact_ceiling(run, parents=2)
    assert got["above_cutoff"] == 1 / 4
    assert got["exact_ceiling"] == pytest.approx((1 - math.log(10) / math.log(40)) / 4)


def test_cutoff_ceiling_by_hand(tmp_path):
    import optuna

    from longrope.runs import Run
    from longrope.runs.vocab import DOC_NLL, SLOT

    run = Run.create(tmp_path / "r", "[search]\n")
    study = optuna.create_study(study_name="long-64", storage=run.storage())
    # generation 0: 10, 20, 30 (parents = 2: generation 1's cut-off is 20, the 2nd best before it);
    # generation 1: 25 and 40 finish above it, 15 below; generation 2's cut-off is 15
    for g, j, v in ((0, 0, 10.0), (0, 1, 20.0), (0, 2, 30.0), (1, 0, 25.0), (1, 1, 15.0), (1, 2, 40.0),
                    (2, 0, 14.0), (2, 1, 16.0)):
        study.add_trial(optuna.trial.create_trial(value=v, system_attrs={SLOT: [g, j]},
                                                  user_attrs={DOC_NLL: [1.0] * 4}))
    got = cutoff_ceiling(run, parents=2)
    assert got["candidates_above_cutoff"] == 3 / 8  # 25, 40 (cut-off 20) and 16 (cut-off 15)
    assert got["cutoff_ceiling"] == pytest.approx(1 - 3 * 3 / 32)  # each stopped after 1 of 4 documents


@pytest.mark.parametrize("tied", [True, False])
def test_forward_flops_equals_torch_count(tied):
    """The bench's FLOP count (speed section, GPU rate) against torch's own counter on eager
    attention: every matmul (the LM head once, tied or not) plus half of attention's QKᵀ and AV
    (causal), plus 2·L per norm weight, which our count takes as weights and torch skips."""
    import torch
    import transformers
    from torch.utils.flop_counter import FlopCounterMode

    from longrope.search.cli.bench.timing import forward_flops

    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied,
                                   attn_implementation="eager")
    model = transformers.LlamaForCausalLM(cfg).eval()
    L = 48
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.randint(0, 300, (1, L)))
    counts = {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    assert forward_flops(model, L) == counts["aten.mm"] + counts["aten.bmm"] // 2 + 2 * L * norms


def test_the_memory_figure_is_the_median_of_fresh_processes_per_path(monkeypatch):
    """The chunked path's peak varies with the allocator from one process to the next: one
    high run must not set the figure (nor one low run)."""
    import subprocess
    import types

    from longrope.search.cli.bench import timing

    peaks = {"chunked": iter([900, 560, 630]), "labels": iter([3000, 3001, 2999])}
    monkeypatch.setattr(timing, "_cpu_name", lambda: "CPU, 2 cores")
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: types.SimpleNamespace(
        returncode=0, stdout=f"{next(peaks[cmd[-1]]) * 2**20}\tCPU, 2 cores\n"))
    m = timing.memory("builtin:x", 64)
    assert (m["peak_chunked"], m["peak_labels"]) == (630 * 2**20, 3000 * 2**20)
    assert m["memory"] == pytest.approx(630 / 3000) and m["measure"] == "RSS"
    assert m["runs"]["chunked"] == [900 * 2**20, 560 * 2**20, 630 * 2**20]


def test_the_memory_probe_compiles_the_head_before_it_measures(monkeypatch):
    """On CUDA the scorer's head is compiled (nll auto), and the first document compiled it inside
    the measured span: Triton's autotuning buffers counted in the chunked path's peak. The probe
    warms it up first, as a worker does when it loads."""
    from longrope.objectives import devices, headnll
    from longrope.search.cli.bench import probe_memory

    order = []

    class Peak:
        bytes = 0

        def __init__(self, device):
            pass

        def __enter__(self):
            order.append("measured")
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(headnll, "warm_up", lambda model, arch: order.append("warmed up"))
    monkeypatch.setattr(devices, "PeakMemory", Peak)
    probe_memory.main("builtin:tiny-sotu", 64, "chunked")
    assert order == ["warmed up", "measured"]
