"""Export loads in transformers and reproduces what the search scored; apply too."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from longrope.objectives.rotary import base_inv_freq
from longrope.objectives.specs import ObjectiveSpec
from longrope.objectives.workers import Evaluator
from longrope.runs import Run
from longrope.runs.export import apply_to_folder, export
from longrope.search import config
from longrope.search.driver import Driver
from longrope.spaces import RescaleFactors, RopeGeometry, UserError

TOML = """
[model]
path = "{model}"
[data]
path = "{data}"
search_docs = 2
heldout_docs = 1
[space]
targets = [128]
short = [16]
deployable = true
[search]
population = 6
parents = 3
mutants = 2
crossovers = 2
iterations = 1
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir, text_corpus_dir):
    import tomllib

    cfg = config.from_dict(tomllib.loads(TOML.format(model=tiny_model_dir, data=text_corpus_dir)))
    run = Run.create(tmp_path_factory.mktemp("run") / "r", config.dumps(cfg))
    Driver(cfg, run, progress=False).run_all()
    return run


def test_export_merged_into_the_model_config_loads_with_the_scored_factors(tiny_run, tiny_model_dir, tmp_path):
    """What a user does with the export: merge its keys into the model's own config.json and load
    it with transformers (4.57 and 5.x in CI). Above L0 transformers uses the long factors the
    search scored, at or below L0 the short ones, with the searched attention factor."""
    path, warnings = export(tiny_run)
    patch = json.loads(path.read_text())
    long, short = tiny_run.best("long", 128), tiny_run.best("short", 16)
    assert patch["longrope_search"]["n_hat"] == 0 and not any("n̂" in w for w in warnings)
    assert long.heldout_ppl is not None and long.heldout_ppl > 1
    merged = json.loads((tiny_model_dir / "config.json").read_text())
    merged.update(patch)
    (tmp_path / "config.json").write_text(json.dumps(merged))
    cfg = transformers.AutoConfig.from_pretrained(tmp_path)
    g = RopeGeometry.from_config(json.loads((tiny_model_dir / "config.json").read_text()))
    for seq_len, record in ((128, long), (33, long), (32, short), (16, short)):
        inv, att = ROPE_INIT_FUNCTIONS["longrope"](cfg, torch.device("cpu"), seq_len=seq_len)
        scored = (base_inv_freq(g) / torch.tensor(record.lambdas, dtype=torch.float32)).numpy()
        np.testing.assert_allclose(inv.numpy(), scored, rtol=1e-6, err_msg=f"seq_len {seq_len}")
        assert att == pytest.approx(long.mscale)
    # vLLM reads these two, not attention_factor: the scales each stage was searched with
    rope = patch["rope_scaling"]
    assert (rope["long_mscale"], rope["short_mscale"]) == (long.mscale, short.mscale) != (1.0, 1.0)
    phi3 = json.loads(export(tiny_run, fmt="phi3")[0].read_text())
    assert set(phi3["rope_scaling"]) == {"type", "short_factor", "long_factor"}
    assert phi3["rope_scaling"]["long_factor"] == list(long.lambdas)


def test_an_export_merged_into_a_config_that_keeps_theta_in_rope_parameters_keeps_theta(tiny_run, tmp_path):
    """transformers 5.x saves θ only in rope_parameters, which the merged rope_scaling replaces:
    the merged model loaded with its class's default θ (10000), on frequencies the search never
    scored, without a word. The export carries θ at the top level, where both versions read it."""
    from hf_configs import tiny_config
    from longrope.runs.export import hf_config_patch

    long, short = (dataclasses.replace(tiny_run.best(k, n), base=5e5) for k, n in (("long", 128), ("short", 16)))
    saved = tiny_config("llama", L0=32, theta=5e5, head_dim=16).to_dict()
    saved.pop("rope_scaling", None)
    saved.pop("rope_theta", None)
    saved["rope_parameters"] = {"rope_theta": 5e5, "rope_type": "default"}  # as 5.x writes config.json
    merged = {**saved, **hf_config_patch(long, short)}
    (tmp_path / "config.json").write_text(json.dumps(merged))
    cfg = transformers.AutoConfig.from_pretrained(tmp_path)
    g = RopeGeometry(rotary_dim=16, base=5e5, original_length=32)
    inv, _ = ROPE_INIT_FUNCTIONS["longrope"](cfg, torch.device("cpu"), seq_len=128)
    scored = (base_inv_freq(g) / torch.tensor(long.lambdas, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(inv.numpy(), scored, rtol=1e-6)


def test_apply_to_a_phi3_folder_uses_the_form_phi3_accepts(tiny_run, tiny_model_dir, tmp_path, capsys):
    base = json.loads((tiny_model_dir / "config.json").read_text())
    keep = {k: base[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                "num_attention_heads", "num_key_value_heads")}
    src = tmp_path / "phi3"
    transformers.Phi3Config(**keep, rope_theta=10000.0, max_position_embeddings=32, pad_token_id=0,
                            bos_token_id=1, eos_token_id=2,  # L0 = 32 like the tiny model (default 4096)
                            original_max_position_embeddings=32).save_pretrained(src)
    path, _ = export(tiny_run)
    out = apply_to_folder(path, src, tmp_path / "phi3-long")
    written = json.loads((out / "config.json").read_text())
    assert set(written["rope_scaling"]) == {"type", "short_factor", "long_factor"}
    cfg = transformers.AutoConfig.from_pretrained(out)
    best = json.loads(tiny_run.best_path("long", 128).read_text())
    inv, att = ROPE_INIT_FUNCTIONS["longrope"](cfg, torch.device("cpu"), seq_len=128)
    expect = 1 / (10000.0 ** (np.arange(0, len(best["lambdas"])) * 2 / (2 * len(best["lambdas"]))))
    np.testing.assert_allclose(inv.numpy(), expect / np.array(best["lambdas"]), rtol=1e-6)
    assert att == pytest.approx(best["mscale"]) and "warning" not in capsys.readouterr().err
    # a searched mscale Phi-3 cannot carry is reported, not dropped silently
    patch = json.loads(path.read_text())
    patch["rope_scaling"]["attention_factor"] = 1.5
    (tmp_path / "odd.json").write_text(json.dumps(patch))
    apply_to_folder(tmp_path / "odd.json", src, tmp_path / "phi3-odd")
    assert "not the searched mscale 1.500000" in capsys.readouterr().err
    # one on the searched grid (step 1e-4) beside the derived value is that value, not a warning
    patch["rope_scaling"]["attention_factor"] = round(att, 4) + (4e-5 if round(att, 4) < att else -4e-5)
    (tmp_path / "grid.json").write_text(json.dumps(patch))
    apply_to_folder(tmp_path / "grid.json", src, tmp_path / "phi3-grid")
    assert "warning" not in capsys.readouterr().err


def test_apply_writes_theta_at_the_top_and_switches_a_sliding_window_off(tiny_run, tiny_model_dir, tmp_path,
                                                                          capsys):
    """A folder saved by transformers 5.x keeps θ only in rope_parameters: 4.57 (and vLLM on it)
    reads it at the top level and would fall back to 10000. A sliding window in the source config
    was off for every score (models.py): the applied model must not attend through one."""
    src = tmp_path / "src"
    shutil.copytree(tiny_model_dir, src)
    cfg = json.loads((src / "config.json").read_text())
    theta = cfg.pop("rope_theta", None) or cfg["rope_parameters"]["rope_theta"]
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    cfg["sliding_window"] = 24
    (src / "config.json").write_text(json.dumps(cfg))
    path, _ = export(tiny_run)
    written = json.loads((apply_to_folder(path, src, tmp_path / "out") / "config.json").read_text())
    assert written["rope_theta"] == theta == written["rope_parameters"]["rope_theta"]
    assert written["sliding_window"] is None
    assert "the sliding window of 24 tokens" in capsys.readouterr().err


def test_export_warns_of_the_attention_factor_where_lengths_up_to_l0_were_scored_without_it(tiny_run,
                                                                                            tmp_path):
    """transformers scales attention by attention_factor at every length: with no short stage the
    lengths up to L0 (scored with the model's own rotary) get it too, and the export says so."""
    long = tiny_run.best("long", 128)
    copy = Run.create(tmp_path / "copy", (tiny_run.path / "config.toml").read_text())
    copy.write_best(dataclasses.replace(long, mscale=1.2))
    _, warnings = export(copy)
    assert any("attention_factor 1.2 at every length" in w and "no short result" in w for w in warnings)
    copy.write_best(dataclasses.replace(long, mscale=1.0))
    assert not any("attention_factor" in w for w in export(copy)[1])


def test_apply_to_an_interleaved_rotary_says_vllm_will_not_load_it(tiny_run, tmp_path, capsys):
    from hf_configs import tiny_config

    src = tmp_path / "cohere"
    tiny_config("cohere", L0=32).save_pretrained(src)  # 8 rotary frequencies, L0 = 32: the run's
    path, _ = export(tiny_run)
    apply_to_folder(path, src, tmp_path / "cohere-long")
    assert "cohere rotates interleaved pairs; vLLM's LongRoPE rotary takes only the neox layout" in \
        capsys.readouterr().err
    apply_to_folder(path, tiny_run.config()["model"]["path"], tmp_path / "llama-long")
    assert "interleaved" not in capsys.readouterr().err


def test_an_applied_mixtral_without_head_dim_loads(tiny_run, tmp_path):
    """Mixtral-8x7B's config.json has no head_dim and MixtralConfig leaves it None; transformers'
    longrope code reads getattr(config, "head_dim", ...) without a fallback for None, so the applied
    folder failed to load (int(None * 1.0)). apply writes hidden_size / heads."""
    import transformers

    from hf_configs import tiny_config

    src = tmp_path / "mixtral"
    tiny_config("mixtral", L0=32, head_dim=None).save_pretrained(src)  # 8 rotary frequencies, as the run's
    assert json.loads((src / "config.json").read_text()).get("head_dim") is None
    path, _ = export(tiny_run)
    out = apply_to_folder(path, src, tmp_path / "mixtral-long")
    assert json.loads((out / "config.json").read_text())["head_dim"] == 16
    assert transformers.AutoConfig.from_pretrained(out).max_position_embeddings == 128


def test_export_of_a_searched_stage_whose_heldout_score_is_to_come_calls_its_factors_its_result(tmp_path):
    """Killed as it wrote the best's held-out score (the journal's last line): the stage is searched
    and its factors are final; the export called it unfinished at 36/36 evaluations."""
    from search_helpers import run_small

    run, _ = run_small(tmp_path)
    last = run.journal.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[1]
    assert b'"heldout"' in last  # the stage's last write
    with open(run.journal, "r+b") as f:
        f.truncate(run.journal.stat().st_size - 10)
    _, said = export(Run.open(run.path))
    assert [w for w in said if "long-256" in w] == [
        "stage long-256 is searched but its best's held-out score is still to come: these factors are its "
        f"result; `longrope resume {run.path}` scores it"]


def test_export_csv_and_unknown_target(tiny_run, tmp_path):
    path, said = export(tiny_run, fmt="csv", out=str(tmp_path / "f.csv"))
    best = json.loads(tiny_run.best_path("long", 128).read_text())
    assert [float(x) for x in path.read_text().split()] == best["lambdas"]
    # a table to read loads nowhere: transformers' attention factor is the JSON's warning alone
    assert not any("attention_factor" in w for w in said)
    assert any("attention_factor" in w for w in export(tiny_run, out=str(tmp_path / "f.json"))[1]), \
        "the run's long and short mscale no longer differ: pick a case where they do"
    with pytest.raises(UserError, match="no long result for length 4096 \\(it has: 128\\)"):
        export(tiny_run, target=4096)
    # a short stage's n̂ is the JSON's warning alone: the CSV holds the long factors
    copy = Run.create(tmp_path / "copy", (tiny_run.path / "config.toml").read_text())
    long = tiny_run.best("long", 128)
    copy.write_best(dataclasses.replace(long, n_hat=0))
    copy.write_best(dataclasses.replace(long, kind="short", target_length=32, n_hat=1))
    assert not any("n̂" in w for w in export(copy, fmt="csv", out=str(tmp_path / "c.csv"))[1])
    assert any("n̂ = 1 (short-32)" in w for w in export(copy, out=str(tmp_path / "c.json"))[1])


def test_export_to_a_symlink_or_a_fifo_writes_through_it(tiny_run, tmp_path):
    """`export -o` replaced whatever was at the path with a regular file (os.replace): a symlink
    lost its link and its target kept the old text, a FIFO stopped being one, and as root
    `-o /dev/stdout` replaced /dev/stdout itself. Now a link's target is written (atomically, the
    link kept) and a FIFO (as /dev/stdout) is written through."""
    import os
    import stat
    import threading

    real, link = tmp_path / "real.json", tmp_path / "link.json"
    real.write_text("old")
    link.symlink_to(real)
    export(tiny_run, out=str(link))
    assert link.is_symlink() and json.loads(real.read_text())["rope_scaling"]["rope_type"] == "longrope"
    fifo, got = tmp_path / "pipe", []
    os.mkfifo(fifo)
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    export(tiny_run, out=str(fifo))
    reader.join(10)
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and json.loads(got[0]) == json.loads(real.read_text())


def test_apply_output_loads_and_equals_the_patched_evaluator(tiny_run, tiny_model_dir, tmp_path,
                                                              text_corpus_dir):
    path, _ = export(tiny_run)
    out = apply_to_folder(path, tiny_model_dir, tmp_path / "extended")
    best = json.loads(tiny_run.best_path("long", 128).read_text())
    model = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    ev = Evaluator(ObjectiveSpec.of(str(tiny_model_dir), str(text_corpus_dir), attention="eager",
                                 search_docs=2, heldout_docs=1))
    ev.rotary.set_factors(RescaleFactors(tuple(best["lambdas"]), 0, best["mscale"]))
    ids = torch.as_tensor(ev.docs(128)[0])[None]
    with torch.no_grad():
        a, b = model(ids).logits, ev.loaded.model(ids).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(UserError, match="not a model folder"):
        apply_to_folder(path, tmp_path, tmp_path / "x")


def test_an_apply_killed_while_it_copies_leaves_nothing_half_made(tiny_run, tiny_model_dir, tmp_path, monkeypatch):
    """apply --copy of a big model takes minutes: killed halfway it left a folder without its
    config.json that the next apply refused as "not empty". It builds beside the output and
    renames it over once whole; what a kill -9 leaves there is removed by the next apply."""
    path, _ = export(tiny_run)
    out = tmp_path / "long"
    copy2, copied = shutil.copy2, []

    def killed(src, dst, **kw):
        copied.append(src)
        if len(copied) == 2:
            raise KeyboardInterrupt
        return copy2(src, dst, **kw)

    monkeypatch.setattr(shutil, "copy2", killed)
    with pytest.raises(KeyboardInterrupt):
        apply_to_folder(path, tiny_model_dir, out, copy=True)
    assert list(out.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["long"]
    monkeypatch.setattr(shutil, "copy2", copy2)
    (tmp_path / ".long.99999999.tmp").mkdir()  # left by a kill -9 (its pid runs no more)
    (tmp_path / ".long.99999999.tmp" / "model.safetensors").write_text("half")
    apply_to_folder(path, tiny_model_dir, out, copy=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in tiny_model_dir.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long"]
    assert transformers.AutoConfig.from_pretrained(out).max_position_embeddings == 128


def test_apply_raises_the_tokenizers_model_max_length_to_the_new_length(tiny_run, tiny_model_dir, tmp_path, capsys):
    """A tokenizer saved with model_max_length = L0 truncates every text to L0 when called with
    truncation=True, as pipelines do: the applied folder's own is the new length."""
    src = tmp_path / "src"
    shutil.copytree(tiny_model_dir, src)
    tok = json.loads((src / "tokenizer_config.json").read_text())
    (src / "tokenizer_config.json").write_text(json.dumps({**tok, "model_max_length": 32}))
    path, _ = export(tiny_run)
    out = apply_to_folder(path, src, tmp_path / "long")
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 128
    assert "model_max_length 32 is raised to 128" in capsys.readouterr().err
    loaded = transformers.AutoTokenizer.from_pretrained(out)
    assert len(loaded("word " * 100, truncation=True)["input_ids"]) > 32


def test_phi3_warns_of_a_searched_mscale_a_thousandth_off_the_derived_one():
    from longrope.runs.export import phi3_mscale_warning
    from longrope.spaces import mscale_su

    derived = mscale_su(4.0, 64)
    patch = {"max_position_embeddings": 256, "original_max_position_embeddings": 64,
             "rope_scaling": {"long_factor": [1.0] * 4, "short_factor": [1.0] * 4, "factor": 4.0,
                              "original_max_position_embeddings": 64, "attention_factor": derived + 1e-3}}
    assert phi3_mscale_warning(patch) is not None
    patch["rope_scaling"]["attention_factor"] = derived
    assert phi3_mscale_warning(patch) is None


def test_export_writes_what_each_record_holds(tiny_run, tmp_path):
    """The values an export carries, each from its own record: the longest target by default, the
    short stage's own n̂, the long mscale for lengths up to L0 when there is no short stage (what
    transformers applies there), the exact λ in a CSV, and L / L0 for a target no multiple of L0."""
    long = tiny_run.best("long", 128)
    run = Run.create(tmp_path / "r", (tiny_run.path / "config.toml").read_text())
    exact = tuple(1.0 + i / 3 for i in range(len(long.lambdas)))  # off any decimal grid
    for n in (64, 100):
        run.write_best(dataclasses.replace(long, target_length=n, lambdas=exact if n == 100 else long.lambdas,
                                           mscale=1.25))
    assert run.best("long").target_length == 100  # the longest, not the first found
    path, _ = export(run)
    patch = json.loads(path.read_text())
    assert path.name == "longrope-100.json" and patch["rope_scaling"]["factor"] == 100 / 32  # 3.125
    assert patch["rope_scaling"]["short_mscale"] == patch["rope_scaling"]["long_mscale"] == 1.25
    csv, _ = export(run, fmt="csv")
    assert tuple(float(x) for x in csv.read_text().split()) == exact
    run.write_best(dataclasses.replace(tiny_run.best("short", 16), n_hat=4))
    assert json.loads(export(run)[0].read_text())["longrope_search"]["short_n_hat"] == 4 != long.n_hat


def test_stages_searched_before_and_after_a_moved_model_export_without_a_fine_tune_warning(tmp_path):
    """Their best files name two paths of one model (`resume --model NEW` between the stages):
    export warned "one set runs on a model it was not searched on", meant for a fine-tune
    between the stages (RUN/models/ft-<L>), which it still names."""
    from search_helpers import run_small

    run, _ = run_small(tmp_path, short="[32]")
    for kind, target, model in (("long", 256, "/old/m"), ("short", 32, "/new/m")):
        path = run.best_path(kind, target)
        path.write_text(json.dumps({**json.loads(path.read_text()), "model": model}))
    _, warnings = export(run)
    assert not [w for w in warnings if "was searched on" in w], warnings
    path = run.best_path("short", 32)
    (run.path / "models" / "ft-256").mkdir(parents=True)
    path.write_text(json.dumps({**json.loads(path.read_text()), "model": str(run.path / "models" / "ft-256")}))
    _, warnings = export(run)
    assert [w for w in warnings if "long-256 was searched on /old/m and short-32 on" in w], warnings
