"""`longrope check`: the environment and the self-test, as JSON and text; a broken rotary
patch makes it fail (exit 1); bf16 ranks the fixed candidates like float32."""

import dataclasses
import json
import math

import pytest
import torch

from longrope.objectives import headnll, rotary, selfcheck
from longrope.objectives.specs import ObjectiveSpec
from longrope.search.cli import main
from longrope.spaces import RopeGeometry


def test_check_json_shape_on_cpu(capsys):
    assert main(["check", "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["torch"] == torch.__version__ and out["cuda"]["available"] is False
    assert out["cuda"]["gpus"] == [] and out["ray_cluster"] is None and "flash_attn" in out
    [t] = out["self_test"]
    assert (t["device"], t["dtype"], t["model"]) == ("cpu", "float32", "builtin:tiny-sotu")
    assert t["rotary_parity"]["identity_bit_exact"] is True
    assert t["rotary_parity"]["linear_max_abs_diff"] <= 1e-4
    assert 0 <= t["rotary_parity"]["longrope_max_rel_diff"] <= t["rotary_parity"]["longrope_tolerance"]
    ev = t["evaluation"]
    assert ev["length"] == 512 and 1 < ev["ppl"] < 1000 and ev["tokens"] == 5 * 512
    assert ev["seconds_per_1k_tokens"] == pytest.approx(1000 * ev["seconds"] / ev["tokens"])
    assert t["rank_check"] is None and t["ok"] is True and out["ok"] is True
    n = t["nll"]  # the head NLL eager vs compiled, on one of those documents
    assert (n["auto"], n["length"], n["compiled"], n["ok"]) == ("eager", 512, True, True)
    assert n["mean_rel_diff"] <= n["tolerance"] == selfcheck.NLL_RTOL and n["max_abs_diff"] < 1e-4
    assert n["eager_seconds"] > 0 and n["compiled_seconds"] > 0


def test_a_broken_patch_fails_the_check(monkeypatch, capsys):
    def wrong(self, factors):  # θ·λ instead of θ/λ: compresses where it should stretch
        self.lambdas.copy_(torch.tensor(factors.lambdas, dtype=torch.float32))
        self.inv_freq.copy_(self.original_inv_freq * self.lambdas)
        self.n_hat, self.mscale, self.factors = factors.n_hat, factors.mscale, factors

    monkeypatch.setattr(rotary.CandidateRotary, "set_factors", wrong)
    monkeypatch.setattr(selfcheck, "evaluation", lambda *a, **kw: (None, {"ok": True, "length": 512, "ppl": 1.0,
                                                                          "seconds": 1.0,
                                                                          "seconds_per_1k_tokens": 1.0}))
    monkeypatch.setattr(selfcheck, "nll_check", lambda *a: {"ok": True, "auto": "eager", "length": 512,
                                                            "eager_seconds": 1.0, "compiled": False,
                                                            "reason": "stubbed"})
    assert main(["check", "--device", "cpu"]) == 1
    text = capsys.readouterr().out
    assert "λ = 1 bit-exact yes" in text and "FAILED" in text and "SOME CHECKS FAILED" in text


def test_a_compiled_head_that_disagrees_fails_the_check(monkeypatch, capsys):
    monkeypatch.setattr(headnll, "_compiled", None)
    monkeypatch.setattr(headnll, "failures", {})
    monkeypatch.setattr(torch, "compile", lambda fn: lambda *a: fn(*a) * 1.001)  # 0.1% off
    assert main(["check", "--device", "cpu"]) == 1
    text = capsys.readouterr().out
    assert "rotary parity: λ = 1 bit-exact yes" in text and "SOME CHECKS FAILED" in text
    assert "mean NLL rel. diff 1.0e-03 (<= 0.0001)" in text
    assert 'FAILED (search and eval with [model] nll = "eager" / --nll eager)' in text


def test_bf16_ranks_candidates_like_float32():
    r = selfcheck.rank_check("builtin:tiny-sotu", "cpu", "bfloat16", docs=2)
    assert r["candidates"] == 12 and r["ok"], r
    assert r["spearman"] >= 0.95 and r["same_best"] and 0 < r["median_rel_diff"] < 0.01


def test_candidates_are_fixed_and_non_decreasing():
    from longrope.spaces import RopeGeometry

    g = RopeGeometry(rotary_dim=16, base=10000.0, original_length=128)
    a, b = selfcheck.candidates(g, 512), selfcheck.candidates(g, 512)
    assert a == b and len({c.lambdas for c in a}) == 12
    assert all(all(x <= y + 1e-12 for x, y in zip(c.lambdas, c.lambdas[1:], strict=False)) for c in a)


def test_check_reads_the_ray_cluster(ray_session, capsys, monkeypatch):
    monkeypatch.setattr(selfcheck, "self_test", lambda *a, **kw: {"ok": True})  # tested above
    assert main(["check", "--json", "--device", "cpu", "--address", "auto"]) == 0
    r = json.loads(capsys.readouterr().out)["ray_cluster"]
    assert r["nodes"] == 1 and r["GPU"] == 2 and r["CPU"] == 2
    assert ray_session.is_initialized()  # the session's Ray is left running


def test_a_device_whose_self_test_breaks_is_reported_and_the_check_goes_on(monkeypatch, capsys):
    """Out of GPU memory (or a driver error) on one device used to end the whole check with a
    traceback, the other devices untested and --json printing nothing."""
    real = selfcheck.self_test
    calls = []

    def breaks_first(model, dev, dtype, **kw):
        calls.append(dev)
        if len(calls) == 1:
            raise RuntimeError("CUDA error: out of memory\nmore lines")
        return real(model, dev, dtype, **kw)

    monkeypatch.setattr(selfcheck, "self_test", breaks_first)
    assert main(["check", "--json", "--device", "cpu"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["self_test"] == [
        {"device": "cpu", "ok": False, "error": "RuntimeError: CUDA error: out of memory"}]
    assert main(["check", "--device", "cpu"]) == 0  # the next call runs: the check itself is sound
    assert "all checks passed" in capsys.readouterr().out


def test_bad_device_is_one_line(capsys):
    assert main(["check", "--device", "tpu"]) == 2
    assert capsys.readouterr().err.strip() == "error: --device 'tpu': use cpu, cuda or cuda:N"
    assert main(["check", "--device", "cuda:7"]) == 2  # no GPU here: said as such
    assert "torch sees no GPU" in capsys.readouterr().err


def test_the_self_test_falls_back_to_a_length_the_documents_reach(tmp_path):
    # SmolLM2 (L0 = 8k) meets one built-in document of 32k tokens: the check must still run, at
    # the longest of 4, 2, 1 x L0 the documents reach (here tiny-sotu, L0 = 128, ~300-token texts)
    from longrope.spaces import UserError

    words = "the union is strong and the people are free to speak their minds about it ".split()
    for i in range(3):
        (tmp_path / f"d{i}.txt").write_text(" ".join(words[(i + j) % len(words)] for j in range(260)))
    _, ev = selfcheck.evaluation("builtin:tiny-sotu", "cpu", "float32", docs=1, data=str(tmp_path))
    assert ev["length"] == 256 and ev["tokens"] == 256 and ev["ok"], ev
    r = selfcheck.rank_check("builtin:tiny-sotu", "cpu", "bfloat16", docs=1, data=str(tmp_path))
    assert r["length"] == 256 and r["ok"], r
    with pytest.raises(UserError, match="reach 128 tokens"):
        selfcheck.evaluation("builtin:tiny-sotu", "cpu", "float32", docs=5, data=str(tmp_path))


@pytest.mark.parametrize("rope", [
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 128},  # a Llama-3.x config
    {"rope_type": "longrope", "long_factor": [1.0] * 16 + [3.0] * 16, "short_factor": [1.0] * 32,
     "factor": 4.0, "original_max_position_embeddings": 128},  # what `longrope apply` writes
])
def test_parity_holds_for_a_model_whose_config_has_its_own_scaling(rope, tmp_path):
    """λ = 1 is plain RoPE whatever the config says: before, a llama3, applied or fine-tuned model
    failed the check (its own scaling was the reference)."""
    import shutil

    from longrope.objectives.models import resolve

    src = resolve("builtin:tiny-sotu")[0]
    shutil.copytree(src, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_theta": 10000.0, **rope}
    cfg["rope_scaling"] = dict(rope, type=rope["rope_type"])  # the key transformers 4.57 reads
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    r = selfcheck.rotary_parity(str(tmp_path / "m"), "cpu", "float32")
    assert r["identity_bit_exact"] and r["linear_max_abs_diff"] <= r["tolerance"] and r["ok"], r


def test_check_takes_a_run_directory_for_its_config(tmp_path, capsys, monkeypatch):
    """`check RUN` checks the run's model in its dtype (before: 'config file RUN does not exist')."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.toml").write_text('[model]\npath = "builtin:tiny-sotu"\ndtype = "bfloat16"\n')
    # what the self-test is given (the self-test itself, in bfloat16 too: the tests above)
    monkeypatch.setattr(selfcheck, "self_test", lambda model, device, dtype, **kw: {
        "ok": True, "model": model, "device": device, "dtype": dtype})
    assert main(["check", str(tmp_path / "run"), "--json", "--device", "cpu"]) == 0
    [t] = json.loads(capsys.readouterr().out)["self_test"]
    assert (t["model"], t["device"], t["dtype"]) == ("builtin:tiny-sotu", "cpu", "bfloat16")
    # a flag given wins over the config's, its default's value too (auto was taken as not given)
    assert main(["check", str(tmp_path / "run"), "--json", "--device", "cpu", "--dtype", "auto"]) == 0
    assert json.loads(capsys.readouterr().out)["self_test"][0]["dtype"] == "auto"
    (tmp_path / "model").mkdir()  # a model folder given where a run or config goes: say so
    (tmp_path / "model" / "config.json").write_text("{}")
    assert main(["check", str(tmp_path / "model"), "--json"]) == 2
    assert "model is a folder but not a run directory (no config.toml) (a model folder: --model DIR)" in \
        capsys.readouterr().err


def test_check_runs_the_configs_attention_and_tokenizer(tmp_path, capsys, monkeypatch):
    """A run set to flash_attention_2 (or eager) was self-tested with SDPA, so a flash-attn that
    breaks on the GPU passed the check and failed the search; a model folder without a tokenizer
    could not be checked at all. Every load of the self-test (the parity twins too: λ = 1 stays
    bit-exact only if they run the same attention) now takes the config's."""
    import shutil

    import transformers

    from longrope.objectives import models

    src = models.resolve("builtin:tiny-sotu")[0]
    shutil.copytree(src, tmp_path / "m", ignore=shutil.ignore_patterns("tokenizer*", "special_tokens*", "vocab*",
                                                                      "merges*"))
    assert not list((tmp_path / "m").glob("tokenizer*"))
    loads, real = [], models.load_model
    monkeypatch.setattr(models, "load_model", lambda *a, **kw: loads.append((a, kw)) or real(*a, **kw))
    twins, build = [], transformers.AutoModelForCausalLM.from_config
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config",
                        lambda *a, **kw: twins.append(build(*a, **kw)) or twins[-1])
    (tmp_path / "run.toml").write_text(f'[model]\npath = "{tmp_path / "m"}"\nattention = "eager"\n'
                                       f'tokenizer = "{src}"\n')
    assert main(["check", str(tmp_path / "run.toml"), "--json", "--device", "cpu"]) == 0
    [t] = json.loads(capsys.readouterr().out)["self_test"]
    assert t["attention"] == "eager" and t["rotary_parity"]["identity_bit_exact"] and t["ok"]
    assert len(twins) == 3 and {m.config._attn_implementation for m in twins} == {"eager"}
    assert len(loads) >= 2 and all(a[3] == "eager" and kw.get("tokenizer", a[5:6] and a[5]) == str(src)
                                   for a, kw in loads), loads
    # flash-attn runs on GPUs only: a flash_attention_2 run's CPU self-test is SDPA's, not a failure
    assert main(["check", "--json", "--device", "cpu", "--attention", "flash_attention_2"]) == 0
    assert json.loads(capsys.readouterr().out)["self_test"][0]["attention"] == "sdpa"


def test_the_rank_checks_float32_reference_of_a_flash_attention_run_is_sdpa(monkeypatch):
    """flash-attn computes only in 16-bit types: the float32 reference it is ranked against must
    load with SDPA, or the check of every flash_attention_2 run fails on the GPU; and it loads once
    the 16-bit model has left the GPU."""
    from types import SimpleNamespace

    from longrope.objectives import workers
    from longrope.objectives.specs import ObjectiveSpec
    from longrope.spaces import RopeGeometry

    made = []

    class Scorer:
        geometry = RopeGeometry(rotary_dim=64, base=10000.0, original_length=128, model_type="llama")

        def __init__(self, spec):
            self.spec = spec
            made.append(spec.model)
            self.loaded = SimpleNamespace(device=spec.model.device, model=SimpleNamespace(
                to=lambda where: made.append(f"to {where}")))

        def docs(self, length):
            return [[0] * length]

        def evaluate(self, c, length):
            return SimpleNamespace(ppl=2.0 + sum(c.lambdas) / 1000 + c.n_hat / 1e5)

    monkeypatch.setattr(workers, "Evaluator", Scorer)
    ev = Scorer(ObjectiveSpec.of("m", device="cuda", dtype="bfloat16", attention="flash_attention_2"))
    r = selfcheck.rank_check("m", "cuda", "bfloat16", ev)
    # the bf16 model leaves the GPU before the float32 one loads (both at once: 3x its weights there)
    assert r["ok"] and [getattr(m, "dtype", m) for m in made] == ["bfloat16", "to meta", "float32"]
    assert [m.attention for m in made[::2]] == ["flash_attention_2", "sdpa"]


def test_a_dtype_that_picks_another_best_fails_the_rank_check_however_close_its_ranking(monkeypatch):
    """A search in bf16 would return another winner than in float32: that is what the check is
    for, whatever Spearman's ρ over the other candidates says."""
    from longrope.objectives import workers
    from longrope.objectives.specs import ObjectiveSpec
    from longrope.spaces import RopeGeometry

    class Scorer:
        geometry = RopeGeometry(rotary_dim=64, base=10000.0, original_length=128, model_type="llama")

        def __init__(self, spec):
            self.spec = spec

        def docs(self, length):
            return [[0] * length]

        def evaluate(self, c, length):
            ppl = 2.0 + sum(c.lambdas) / 1000 + c.n_hat / 1e5
            return type("E", (), {"ppl": ppl})()

    monkeypatch.setattr(workers, "Evaluator", Scorer)
    ev = Scorer(ObjectiveSpec.of("m", dtype="bfloat16"))
    assert selfcheck.rank_check("m", "cpu", "bfloat16", ev)["ok"]
    cands = selfcheck.candidates(ev.geometry, selfcheck.scoring_length(ev))
    fp32 = [ev.evaluate(c, 0).ppl for c in cands]
    first, second = sorted(range(len(cands)), key=fp32.__getitem__)[:2]
    swapped = {first: fp32[second], second: fp32[first]}  # bf16 ranks the two best the other way
    ev.evaluate = lambda c, length: type("E", (), {"ppl": swapped.get(cands.index(c), fp32[cands.index(c)])})()
    r = selfcheck.rank_check("m", "cpu", "bfloat16", ev)
    assert r["spearman"] >= r["min_spearman"] and not r["same_best"] and not r["ok"], r


def test_a_flash_attn_that_does_not_import_is_reported_broken(monkeypatch):
    """An install whose CUDA extension fails to import (built against another torch) was reported
    by its version, as if usable, while every worker asked for flash_attention_2 would fail."""
    import importlib.util
    import sys

    from longrope.search.cli import check

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "flash_attn" else real(name, *a))
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # `import flash_attn` raises ImportError
    assert check.environment()["flash_attn"].startswith("broken: ModuleNotFoundError")


def test_checks_that_passed_what_they_should_not(monkeypatch, capsys, tmp_path):
    """A head that put each NLL on the wrong token kept the mean (only the mean was checked); an n̂
    kept on the wrong positions passed the parity (it ran with n̂ = 0 only); tied infinite
    perplexities ranked alike (ρ = 1); --json printed Infinity, which is not JSON; a config's
    model.device = "cuda" was checked on the CPU, where the search refuses it."""
    real = headnll.head_nll
    monkeypatch.setattr(headnll, "_compiled", lambda *a, **kw: real(*a, **kw).flip(0))  # same mean
    monkeypatch.setattr(headnll, "failures", {})
    out = selfcheck.nll_check(selfcheck.evaluation("builtin:tiny-sotu", "cpu", "float32", docs=1)[0], 256)
    assert out["compiled"] and out["mean_rel_diff"] < 1e-4 and not out["ok"], out
    monkeypatch.undo()

    keep = rotary.CandidateRotary.forward

    def ignored(self, *a, **kw):  # n̂ forgotten: every position stretched
        n, self.n_hat = self.n_hat, 0
        try:
            return keep(self, *a, **kw)
        finally:
            self.n_hat = n

    monkeypatch.setattr(rotary.CandidateRotary, "forward", ignored)
    p = selfcheck.rotary_parity("builtin:tiny-sotu", "cpu", "float32")
    assert p["identity_bit_exact"] and p["linear_max_abs_diff"] <= p["tolerance"] < p["n_hat_max_abs_diff"], p
    assert not p["ok"]
    monkeypatch.undo()

    class Inf:  # every candidate scores inf in both dtypes
        geometry = RopeGeometry(rotary_dim=16, base=1e4, original_length=64, model_type="llama")
        spec = ObjectiveSpec.of("m")

        def docs(self, n):
            return [None]

        def evaluate(self, c, n):
            return type("E", (), {"ppl": math.inf})()

    import longrope.objectives.workers as workers

    monkeypatch.setattr(workers, "Evaluator", lambda spec: Inf())
    r = selfcheck.rank_check("m", "cpu", "bfloat16", Inf())
    assert not r["all_finite"] and not r["ok"], r
    monkeypatch.undo()

    monkeypatch.setattr(selfcheck, "self_test", lambda *a, **kw: {"ok": False, "evaluation": {"ppl": math.inf},
                                                               "device": "cpu"})
    assert main(["check", "--json", "--device", "cpu"]) == 1
    assert json.loads(capsys.readouterr().out, parse_constant=lambda c: 1 / 0)["self_test"][0]["evaluation"] \
        == {"ppl": None}
    monkeypatch.undo()
    (tmp_path / "cuda.toml").write_text('[model]\npath = "builtin:tiny-sotu"\ndevice = "cuda"\n')
    assert main(["check", str(tmp_path / "cuda.toml")]) == 2
    assert "model.device = cuda: torch sees no GPU" in capsys.readouterr().err


def test_the_parity_sees_the_order_of_lambda_and_the_attention_factor(monkeypatch, capsys):
    """Uniform λ and n̂ = length cannot tell λ reversed or an attention factor dropped: the
    longrope twin (rising λ, mscale 1.2) can. A twin transformers refuses is reported, not failed."""
    ok = selfcheck.rotary_parity("builtin:tiny-sotu", "cpu", "float32")
    assert ok["ok"] and isinstance(ok["longrope_max_rel_diff"], float), ok
    keep = rotary.CandidateRotary.set_factors
    for bug in (lambda f: dataclasses.replace(f, lambdas=f.lambdas[::-1]),
                lambda f: dataclasses.replace(f, mscale=1.0)):
        monkeypatch.setattr(rotary.CandidateRotary, "set_factors",
                            lambda self, f, bug=bug: keep(self, None if f is None else bug(f)))
        p = selfcheck.rotary_parity("builtin:tiny-sotu", "cpu", "float32")
        assert p["identity_bit_exact"] and p["linear_max_abs_diff"] <= p["tolerance"], p
        assert p["longrope_max_rel_diff"] > 100 * p["longrope_tolerance"] and not p["ok"], p
    monkeypatch.undo()

    real = selfcheck._twin_logits

    def refuse(model, rope, ids):
        if rope["rope_type"] == "longrope":
            raise ValueError("Unrecognized keys in `rope_scaling` for 'rope_type'='longrope': {'attention_factor'}")
        return real(model, rope, ids)

    monkeypatch.setattr(selfcheck, "_twin_logits", refuse)
    p = selfcheck.rotary_parity("builtin:tiny-sotu", "cpu", "float32")
    assert p["ok"] and p["longrope_max_rel_diff"].startswith("not checked: transformers' longrope twin: "), p
    assert main(["check", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "longrope: max |Δlogit| / max |logit| (not checked: transformers' longrope twin: " in out, out
    assert "all checks passed" in out


def test_flags_win_over_the_configs_keys_and_every_device_must_pass(tmp_path, capsys, monkeypatch):
    """`check RUN --model/--dtype/--attention/--tokenizer/--device`: each flag given is what is
    self-tested, the config filling in the rest (a run set to cuda checked on the CPU with --device
    cpu). Over several devices one failing fails the check; a model that cannot load is the one
    line and exit 2 of any bad input, not a device's failure; a GPU index past the last is refused."""
    from longrope.search.cli import check
    from longrope.spaces import UserError

    seen, fails = [], set()

    def stub(model, dev, dtype, **kw):
        if model == "missing":
            raise UserError("model path missing does not exist")
        seen.append((model, dev, dtype, kw))
        return {"device": dev, "ok": dev not in fails}

    monkeypatch.setattr(selfcheck, "self_test", stub)
    (tmp_path / "run.toml").write_text('[model]\npath = "builtin:smollm2-135m"\ndtype = "bfloat16"\n'
                                       f'attention = "eager"\ntokenizer = "{tmp_path}"\ndevice = "cuda"\n')
    flags = ["--model", "builtin:tiny-sotu", "--dtype", "float32", "--attention", "sdpa", "--tokenizer", "tok"]
    assert main(["check", str(tmp_path / "run.toml"), "--json", "--device", "cpu", *flags]) == 0
    assert seen == [("builtin:tiny-sotu", "cpu", "float32", {"attention": "sdpa", "tokenizer": "tok"})]
    seen.clear()
    assert main(["check", str(tmp_path / "run.toml"), "--json", "--device", "cpu"]) == 0  # the config's
    assert seen == [("builtin:smollm2-135m", "cpu", "bfloat16", {"attention": "eager", "tokenizer": str(tmp_path)})]
    capsys.readouterr()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(check, "environment", lambda: {"gpus": 2})  # names, memory: no CUDA to ask here
    fails.add("cuda:1")
    assert main(["check", "--json"]) == 1  # cpu, cuda:0 pass; cuda:1 fails
    out = json.loads(capsys.readouterr().out)
    assert [t["device"] for t in out["self_test"]] == ["cpu", "cuda:0", "cuda:1"] and out["ok"] is False
    assert main(["check", "--model", "missing", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: model path missing does not exist"
    assert main(["check", "--device", "cuda:2"]) == 2
    assert "--device cuda:2: torch sees 2 GPU(s), cuda:0 to cuda:1" in capsys.readouterr().err


def test_the_parity_checks_compare_the_last_positions_logits_only(monkeypatch):
    """At 2 x L0 the logits of every position, held several times over, ran a GPU out of memory for
    a large vocabulary (Qwen2.5-7B at 65k: 20 GB each in bf16): the checks compare the first and
    last PARITY_POSITIONS / 2 positions' (the last read every earlier key as rotated)."""
    import torch

    from longrope.objectives.models import load_model

    m = load_model("builtin:tiny-sotu").model
    ids = torch.randint(0, m.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(selfcheck, "PARITY_POSITIONS", 16)
    with torch.no_grad():
        full, got = m(ids).logits, selfcheck._logits(m, ids)
        assert torch.equal(got, full[:, [*range(8), *range(32, 40)]])
        assert torch.equal(selfcheck._logits(m, ids[:, :16]), full[:, :16])  # no more: all of them
    real, shapes = selfcheck._logits, []

    def recorded(model, ids):
        out = real(model, ids)
        shapes.append((ids.shape[1], out.shape[1]))
        return out

    monkeypatch.setattr(selfcheck, "_logits", recorded)
    r = selfcheck.rotary_parity("builtin:tiny-sotu", "cpu", "float32")
    assert r["ok"] and r["identity_bit_exact"] and len(shapes) == 7  # 3 twins, 4 forwards of the patch
    assert set(shapes) == {(256, 16)}
