"""Bad factors, folders and best files for apply, eval and export: one line, exit 2, nothing made."""

import json

import pytest
import transformers

from longrope.search.cli import main

GOOD = {"max_position_embeddings": 128, "original_max_position_embeddings": 32,
        "rope_scaling": {"rope_type": "longrope", "type": "longrope", "long_factor": [1.0, 1.0, 1.5, 1.5, 2.0, 2.0, 2.5, 2.5],
                         "short_factor": [1.0] * 8, "factor": 4.0, "original_max_position_embeddings": 32,
                         "attention_factor": 1.2}}


def patched(**rope):
    d = json.loads(json.dumps(GOOD))
    d["rope_scaling"].update(rope)
    return d


FACTORS = {
    "nan": (patched(long_factor=[1.0, float("nan")] + [2.0] * 6), "long_factor[1] must be a finite number"),
    "strings": (patched(long_factor=["1.0"] * 8), "long_factor[0] must be a finite number"),
    "decreasing": (patched(long_factor=[1.0, 3.0, 2.0] + [3.0] * 5), "λ[2] = 2.0 is below λ[1] = 3.0"),
    "below one": (patched(short_factor=[0.5] + [1.0] * 7), "λ[0] = 0.5 is below 1"),
    "negative attention factor": (patched(attention_factor=-1.0), "attention_factor = -1.0 must be positive"),
    "rope_scaling not an object": ({**GOOD, "rope_scaling": [1, 2]}, "rope_scaling must be an object"),
    "no long_factor": ({**GOOD, "rope_scaling": {"rope_type": "linear", "factor": 4.0}}, "has no long_factor"),
    "longrope_search a string": ({**GOOD, "longrope_search": "x"}, "longrope_search must be an object, got str"),
    # compared with int64 position ids in the rotary: OverflowError, a traceback from eval
    "n_hat past int32": ({**GOOD, "longrope_search": {"n_hat": 10**20}},
                         "factors JSON: n_hat must be an integer from 0 to 2147483647, got 100000000000000000000"),
    "max_position_embeddings a string": ({**GOOD, "max_position_embeddings": "abc"},
                                         "max_position_embeddings must be a positive integer, got 'abc'"),
    "max_position_embeddings below L0": ({**GOOD, "max_position_embeddings": 16},
                                         "max_position_embeddings = 16 is below the original length 32"),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_model_dir):
    d = tmp_path_factory.mktemp("apply")
    (d / "gpt2").mkdir()
    transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(d / "gpt2")
    (d / "notjson").mkdir()
    (d / "notjson" / "config.json").write_text("{model_type: llama")
    (d / "good.json").write_text(json.dumps(GOOD))
    (d / "afile").write_text("x")
    return d


def one_line(capsys, rc, message):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and message in lines[0] and "Traceback" not in err, err


@pytest.mark.parametrize("case", list(FACTORS))
def test_apply_and_eval_refuse_the_same_factors(case, tmp_path, capsys, tiny_model_dir, folders):
    patch, message = FACTORS[case]
    f = tmp_path / "f.json"
    f.write_text(json.dumps(patch))  # json writes NaN as a bare NaN, as the issue found in config.json
    one_line(capsys, main(["apply", str(f), str(tiny_model_dir), "-o", str(tmp_path / "out")]), message)
    assert not (tmp_path / "out").exists()
    one_line(capsys, main(["eval", "--model", "synthetic", "--lengths", "64", "--methods", str(f)]), message)


@pytest.mark.parametrize("model, out, message", [
    ("gpt2", "new", "has no rotary position embedding"),
    ("notjson", "new", "is not valid JSON"),
    (None, "afile", "exists and is a file"),
    (None, "afile/model", "cannot create model folder"),  # under a file: one line, not NotADirectoryError
])
def test_apply_to_bad_folders(model, out, message, tmp_path, capsys, tiny_model_dir, folders):
    src = folders / model if model else tiny_model_dir
    dest = folders / out if out.startswith("afile") else tmp_path / out
    one_line(capsys, main(["apply", str(folders / "good.json"), str(src), "-o", str(dest)]), message)
    assert out.startswith("afile") or not dest.exists()


def test_export_skips_nothing_silently_and_cleans_its_temp_files(tmp_path, capsys):
    from search_helpers import small_cfg

    (tmp_path / "c.toml").write_text(small_cfg()[1])
    run = tmp_path / "run"
    assert main(["search", str(tmp_path / "c.toml"), "--run-dir", str(run), "--quiet"]) == 0
    (run / "export" / ".longrope-256.json.99999.tmp").write_text("half an export")  # a killed export
    (run / "export" / ".editor-autosave.tmp").write_text("not ours")  # -o may name any folder
    assert main(["export", str(run)]) == 0
    assert [p.name for p in (run / "export").glob(".*.tmp")] == [".editor-autosave.tmp"]
    best = run / "best" / "long-256.json"
    best.write_text(best.read_text()[:40])  # truncated
    capsys.readouterr()
    one_line(capsys, main(["export", str(run)]), "long-256.json")


def test_export_of_an_unfinished_stage_says_so(tmp_path, capsys, monkeypatch):
    """An interrupted run's best file holds the best so far: the export works and warns, naming the
    stage's count; once resumed to the end it does not."""
    from search_helpers import ctrl_c_after, small_cfg

    (tmp_path / "c.toml").write_text(small_cfg(iterations=2)[1])  # 12 + 2 x 6 = 24 evaluations
    ctrl_c_after(monkeypatch, 14)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:  # the driver's own exit, as Ctrl-C gives it
        main(["search", str(tmp_path / "c.toml"), "--run-dir", str(run), "--quiet"])
    assert stop.value.code == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["export", str(run)]) == 0
    warn = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning: stage")]
    assert len(warn) == 1 and "stage long-256 is unfinished (14/24 evaluations)" in warn[0], warn
    assert main(["resume", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["export", str(run)]) == 0
    assert "unfinished" not in capsys.readouterr().err


def test_export_of_a_run_whose_longer_target_has_no_result_yet_says_so(tmp_path, capsys, monkeypatch):
    """targets [256, 512], interrupted in long-256: the export is long-256's, and it warned of that
    stage alone, not that the run's 512 target has nothing yet (a user exports, deploys at 512)."""
    from search_helpers import ctrl_c_after, small_cfg

    (tmp_path / "c.toml").write_text(small_cfg(iterations=2)[1].replace("targets = [256]", "targets = [256, 512]"))
    run = tmp_path / "run"
    for evals, state in ((20, "not started"), (4, "0/24 evaluations")):  # in long-256, then as long-512 began
        ctrl_c_after(monkeypatch, evals)
        with pytest.raises(SystemExit):
            main(["search" if evals == 20 else "resume", *([str(tmp_path / "c.toml"), "--run-dir"]
                                                             if evals == 20 else []), str(run), "--quiet"])
        monkeypatch.undo()
        capsys.readouterr()
        assert main(["export", str(run)]) == 0
        err = capsys.readouterr().err
        assert f"warning: stage long-512 has no result yet ({state}): this export reaches 256 tokens, not 512" \
            in err, err
    assert main(["resume", str(run), "--quiet"]) == 0
    capsys.readouterr()
    for target in ([], ["--target", "256"]):  # the shorter one asked for: 512 has its result
        assert main(["export", str(run), *target]) == 0
        assert "no result yet" not in capsys.readouterr().err


def test_export_of_a_run_whose_short_stage_has_no_result_yet_says_so(tmp_path, capsys, monkeypatch):
    """Interrupted as its short stage began: the export has λ = 1 up to L0, and its one warning
    said the lengths up to L0 were scored "(no short stage)". Now it names the stage."""
    from search_helpers import ctrl_c_after, small_cfg

    (tmp_path / "c.toml").write_text(small_cfg(iterations=2, short="[32]")[1])
    ctrl_c_after(monkeypatch, 24)  # long-256's 24 evaluations, then short-32's first
    run = tmp_path / "run"
    with pytest.raises(SystemExit):
        main(["search", str(tmp_path / "c.toml"), "--run-dir", str(run), "--quiet"])
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["export", str(run)]) == 0
    err = capsys.readouterr().err
    assert "warning: stage short-32 has no result yet (0/24 evaluations): the export has no short factors" \
        in err and "no short stage" not in err, err
    assert main(["resume", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["export", str(run)]) == 0
    assert "no result yet" not in capsys.readouterr().err


def test_apply_takes_an_embedded_model_by_its_builtin_name(tmp_path, capsys):
    """`apply EXPORT builtin:tiny-sotu`, as `eval --model` and the config name it (before: 'not a
    model folder (no config.json)')."""
    patch = {"max_position_embeddings": 512, "original_max_position_embeddings": 128,
             "rope_scaling": {"rope_type": "longrope", "long_factor": [1.0] * 16 + [3.0] * 16,
                              "short_factor": [1.0] * 32, "factor": 4.0, "original_max_position_embeddings": 128}}
    (tmp_path / "f.json").write_text(json.dumps(patch))
    assert main(["apply", str(tmp_path / "f.json"), "builtin:tiny-sotu", "-o", str(tmp_path / "m")]) == 0
    written = json.loads((tmp_path / "m" / "config.json").read_text())
    assert written["max_position_embeddings"] == 512 and (tmp_path / "m" / "model.safetensors").exists()
    one_line(capsys, main(["apply", str(tmp_path / "f.json"), "builtin:nope", "-o", str(tmp_path / "n")]),
             "unknown builtin model 'builtin:nope'")
    # refused by the model's own check: named as given, not by its folder inside the install
    one_line(capsys, main(["apply", str(tmp_path / "f.json"), "builtin:tiny-sotu-alibi", "-o", str(tmp_path / "a")]),
             "error: builtin:tiny-sotu-alibi is an ALiBi model (no rotary embeddings)")


def test_factors_of_another_model_are_refused_by_apply_and_eval(tmp_path, capsys):
    """The same count of factors, searched for a model trained at 8192 (SmolLM2's), on
    tiny-sotu (trained at 128): before, apply wrote a config with L0 = 8192 and eval scored it."""
    patch = {"max_position_embeddings": 16384, "original_max_position_embeddings": 8192,
             "rope_scaling": {"rope_type": "longrope", "long_factor": [1.0] * 16 + [2.0] * 16,
                              "short_factor": [1.0] * 32, "factor": 2.0, "original_max_position_embeddings": 8192}}
    f = tmp_path / "smol.json"
    f.write_text(json.dumps(patch))
    one_line(capsys, main(["apply", str(f), "builtin:tiny-sotu", "-o", str(tmp_path / "m")]),
             "holds factors for a model trained at 8192 tokens")
    assert not (tmp_path / "m").exists()
    one_line(capsys, main(["eval", "--model", "builtin:tiny-sotu", "--lengths", "256", "--samples", "1",
                           "--methods", f"none,{f}"]), "factors for a model trained at 8192 tokens")


def test_apply_counts_the_frequencies_the_model_loads_with(tmp_path, capsys):
    """A config.json that leaves out what its class defaults: Qwen3's head_dim is 128 whatever
    hidden_size / heads says (64 / 4 = 16 here). Before: apply read the file alone, counted 8
    frequencies, refused factors for the model's 64 and took 8-value ones transformers rejects."""
    cfg = transformers.Qwen3Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=64, num_hidden_layers=1, vocab_size=100,
                                   max_position_embeddings=32).to_dict()
    del cfg["head_dim"]
    model = tmp_path / "qwen3"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(cfg))
    assert transformers.AutoConfig.from_pretrained(model).head_dim == 128
    rope = {**GOOD["rope_scaling"], "long_factor": [1.0] * 32 + [2.0] * 32, "short_factor": [1.0] * 64}
    right = tmp_path / "right.json"
    right.write_text(json.dumps({**GOOD, "rope_scaling": rope}))
    assert main(["apply", str(right), str(model), "-o", str(tmp_path / "out")]) == 0
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert len(written["rope_scaling"]["long_factor"]) == 64
    assert written["head_dim"] == 128 == transformers.AutoConfig.from_pretrained(tmp_path / "out").head_dim  # was 16
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(GOOD))  # 8 values: hidden_size / heads / 2
    one_line(capsys, main(["apply", str(wrong), str(model), "-o", str(tmp_path / "out2")]),
             "the factors have 8 values but the model has 64 rotary frequencies")


def test_factors_searched_with_another_theta_are_refused_by_apply_and_eval(tmp_path, capsys, tiny_model_dir):
    """An export carries the θ it was searched with: on a model of another θ (the same count of
    frequencies and L0) its factors stretch other frequencies."""
    f = tmp_path / "theta.json"
    f.write_text(json.dumps({**GOOD, "rope_theta": 5e5}))
    one_line(capsys, main(["apply", str(f), str(tiny_model_dir), "-o", str(tmp_path / "m")]),
             "searched with RoPE θ = 500000, but this model has θ = 10000")
    assert not (tmp_path / "m").exists()
    one_line(capsys, main(["eval", "--model", str(tiny_model_dir), "--lengths", "64", "--samples", "1",
                           "--methods", f"none,{f}"]), "searched with RoPE θ = 500000")
    f.write_text(json.dumps({**GOOD, "rope_theta": 10000.0}))
    assert main(["apply", str(f), str(tiny_model_dir), "-o", str(tmp_path / "m")]) == 0


def test_apply_takes_factors_from_a_config_saved_by_transformers_5_and_names_a_bad_file(
        tmp_path, capsys, tiny_model_dir):
    """A config.json saved by transformers 5.x keeps its factors in rope_parameters: apply called it
    "raw factors"; a JSON list was refused without the file's name."""
    saved = {k: v for k, v in GOOD.items() if k != "rope_scaling"}
    f = tmp_path / "config5.json"
    f.write_text(json.dumps({**saved, "rope_parameters": {**GOOD["rope_scaling"], "rope_theta": 10000.0}}))
    assert main(["apply", str(f), str(tiny_model_dir), "-o", str(tmp_path / "m")]) == 0
    assert json.loads((tmp_path / "m" / "config.json").read_text())["rope_scaling"]["long_factor"] == \
        GOOD["rope_scaling"]["long_factor"]
    (tmp_path / "list.json").write_text("[1.0, 2.0]")
    one_line(capsys, main(["apply", str(tmp_path / "list.json"), str(tiny_model_dir), "-o", str(tmp_path / "n")]),
             f"{tmp_path / 'list.json'} must hold a JSON object")


def test_a_config_json_as_the_factors_file_gives_only_its_rope_settings(tmp_path, tiny_model_dir):
    """Another model's config.json with LongRoPE factors (same head size, θ and L0): apply took every
    key of it, and the output had that model's hidden size and layer count (it did not load)."""
    donor = {**GOOD, "rope_theta": 10000.0, "hidden_size": 4096, "num_hidden_layers": 80, "torch_dtype": "bfloat16",
             "rope_scaling": {k: v for k, v in GOOD["rope_scaling"].items() if k != "short_factor"}}
    f = tmp_path / "config.json"
    f.write_text(json.dumps(donor))
    assert main(["apply", str(f), str(tiny_model_dir), "-o", str(tmp_path / "m")]) == 0
    src = json.loads((tiny_model_dir / "config.json").read_text())
    out = json.loads((tmp_path / "m" / "config.json").read_text())
    assert {k: out.get(k) for k in ("hidden_size", "num_hidden_layers", "torch_dtype")} == \
        {k: src.get(k) for k in ("hidden_size", "num_hidden_layers", "torch_dtype")}
    # no short_factor in the file: eval scores the long factors at every length; transformers 5
    # refused a folder without one
    assert out["rope_scaling"]["short_factor"] == GOOD["rope_scaling"]["long_factor"]
    loaded = transformers.AutoConfig.from_pretrained(tmp_path / "m")
    assert loaded.hidden_size == src["hidden_size"]


def test_apply_links_a_subfolder_file_by_file_and_refuses_an_output_inside_the_model(tmp_path, capsys,
                                                                                    tiny_model_dir, folders,
                                                                                    monkeypatch):
    """A subfolder (Llama-3's original/ with a 16 GB checkpoint) was copied whole without --copy;
    -o inside the model folder copied the folder being built into itself; -o . crashed."""
    import shutil

    src = tmp_path / "model"
    shutil.copytree(tiny_model_dir, src)
    (src / "original").mkdir()
    (src / "original" / "consolidated.00.pth").write_bytes(b"w" * 1000)
    good = str(folders / "good.json")
    assert main(["apply", good, str(src), "-o", str(tmp_path / "m")]) == 0
    linked = tmp_path / "m" / "original" / "consolidated.00.pth"
    assert linked.is_symlink() and linked.resolve() == (src / "original" / "consolidated.00.pth").resolve()
    assert main(["apply", good, str(src), "-o", str(tmp_path / "c"), "--copy"]) == 0
    assert not (tmp_path / "c" / "original" / "consolidated.00.pth").is_symlink()
    one_line(capsys, main(["apply", good, str(src), "-o", str(src / "ext")]), "is inside the model folder")
    assert not (src / "ext").exists()
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    one_line(capsys, main(["apply", good, str(src), "-o", "."]), "is the folder you are in")


@pytest.mark.parametrize("search, warned", [
    ({"n_hat": 0, "short_n_hat": 4}, True),  # only the short stage kept positions: read once the long's alone
    ({"n_hat": 3, "short_n_hat": 0}, True),
    ({"n_hat": 0, "short_n_hat": 0}, False),
    (None, False),  # "longrope_search": null, which load_export takes: an AttributeError once the folder was made
])
def test_apply_warns_of_any_n_hat_and_takes_a_null_longrope_search(search, warned, tmp_path, capsys,
                                                                   tiny_model_dir):
    f = tmp_path / "f.json"
    f.write_text(json.dumps({**GOOD, "longrope_search": search}))
    assert main(["apply", str(f), str(tiny_model_dir), "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert ("n̂ > 0 is not applied by transformers" in err) == warned, err
    assert json.loads((tmp_path / "out" / "config.json").read_text())["rope_scaling"]["attention_factor"] == 1.2


def test_a_folder_given_as_the_factors_file_is_called_a_folder(tmp_path, capsys, tiny_model_dir):
    """'factors file d does not exist' for a folder that did."""
    (tmp_path / "d.json").mkdir()
    message = f"factors file {tmp_path / 'd.json'} is a folder, not a file"
    one_line(capsys, main(["apply", str(tmp_path / "d.json"), str(tiny_model_dir), "-o", str(tmp_path / "o")]),
             message)
    one_line(capsys, main(["eval", "--model", "synthetic", "--lengths", "64", "--methods", str(tmp_path / "d.json")]),
             message)
    one_line(capsys, main(["eval", "--model", "synthetic", "--lengths", "64", "--methods", str(tmp_path / "no.json")]),
             f"factors file {tmp_path / 'no.json'} does not exist")


def test_a_config_from_a_pipe_is_read(tmp_path, capsys):
    """`longrope config <(...)`: a FIFO is no regular file, and was called missing."""
    import os
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text('[search]\npopulation = 8\nparents = 4\n'
                                                             'mutants = 2\ncrossovers = 2\n'))
    writer.start()
    assert main(["config", str(fifo)]) == 0
    writer.join()
    assert "population = 8" in capsys.readouterr().out


def test_a_failed_write_says_the_previous_version_is_intact_only_where_there_was_one(tmp_path, monkeypatch):
    """export -o naming a folder said 'the previous version is intact' of a file that never was."""
    import os

    from longrope.spaces import UserError
    from longrope.spaces.files import atomic_write_text

    (tmp_path / "d").mkdir()
    with pytest.raises(UserError, match=r"cannot write .*/d: Is a directory$"):
        atomic_write_text(tmp_path / "d", "x")
    (tmp_path / "f").write_text("old")

    def full(*a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(UserError, match=r"cannot write .*/f: No space left on device; the previous version"):
        atomic_write_text(tmp_path / "f", "new")
    monkeypatch.undo()
    assert (tmp_path / "f").read_text() == "old"


def test_apply_leaves_out_mistrals_native_params_json(tmp_path, capsys, tiny_model_dir):
    """vLLM reads params.json over config.json where consolidated*.safetensors sit beside it (a
    Mistral hub snapshot ships both): the applied folder served plain RoPE there, without a word."""
    import shutil

    src = tmp_path / "mistral"
    shutil.copytree(tiny_model_dir, src)
    (src / "params.json").write_text('{"dim": 256, "rope_theta": 10000.0}')
    (src / "consolidated.safetensors").write_bytes(b"")
    (tmp_path / "f.json").write_text(json.dumps(GOOD))
    assert main(["apply", str(tmp_path / "f.json"), str(src), "-o", str(tmp_path / "out")]) == 0
    assert "params.json (Mistral's native config, without the factors) is left out" in capsys.readouterr().err
    assert not (tmp_path / "out" / "params.json").exists() and (tmp_path / "out" / "config.json").is_file()


def test_a_best_file_deleted_by_hand_is_named_by_status_and_export_and_written_again_by_resume(tmp_path, capsys):
    """best/ deleted under a finished run (a tidied folder): status called the run done, export
    said it had "no long-context result yet; run or resume the search first" (or, for a longer or
    the short stage, "no result yet (24/24 evaluations)"), which reads as a run to search again."""
    from search_helpers import small_cfg

    (tmp_path / "c.toml").write_text(small_cfg(iterations=1, short="[32]")[1].replace("targets = [256]",
                                                                                      "targets = [128, 256]"))
    run = tmp_path / "run"
    assert main(["search", str(tmp_path / "c.toml"), "--run-dir", str(run), "--quiet"]) == 0
    kept = {p.name: p.read_bytes() for p in (run / "best").iterdir()}
    (run / "best" / "long-256.json").unlink()
    capsys.readouterr()
    assert main(["status", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(": ")[0].strip() for ln in lines if "best file" in ln] == ["long-256"]
    assert "done, its best file best/long-256.json is missing (resume writes it again)" in "".join(lines)
    for target in ([], ["--target", "256"]):
        assert main(["export", str(run), *target]) == 2
        assert capsys.readouterr().err.strip() == (
            f"error: {run / 'best' / 'long-256.json'} is missing (deleted?), though the journal holds that "
            f"stage's results: `longrope resume {run}` writes it again")
    assert main(["export", str(run), "--target", "128"]) == 0  # the shorter stage's file is there
    assert ("warning: stage long-256's best file is missing (deleted?): this export reaches 128 tokens, not "
            f"256; `longrope resume {run}` writes it again") in capsys.readouterr().err.splitlines()
    (run / "best" / "short-32.json").unlink()
    assert main(["resume", str(run), "--quiet"]) == 0
    assert {p.name: p.read_bytes() for p in (run / "best").iterdir()} == kept
    (run / "best" / "short-32.json").unlink()
    capsys.readouterr()
    assert main(["export", str(run)]) == 0
    assert ("warning: stage short-32's best file is missing (deleted?): the export has no short factors "
            f"(λ = 1 up to L0); `longrope resume {run}` writes it again") in capsys.readouterr().err.splitlines()
    assert main(["status", str(run), "--json"]) == 0
    missing = {s["name"]: s["best_file_missing"] for s in json.loads(capsys.readouterr().out)["stages"]}
    assert missing == {"long-128": False, "long-256": False, "short-32": True}


def test_apply_reads_its_factors_from_a_pipe(tmp_path, capsys, tiny_model_dir):
    """`longrope apply <(longrope export ...) MODEL -o OUT`: the file was read twice (the second read
    of a pipe finds nothing: "is not valid JSON"); a pipe's error names the pipe, not a temp file."""
    import os

    def piped(text: str) -> str:  # as bash's <(...) gives it: /dev/fd/N, a pipe its writer has closed
        r, w = os.pipe()
        os.write(w, text.encode())
        os.close(w)
        opened.append(r)
        return f"/dev/fd/{r}"

    opened: list[int] = []
    try:
        fd = piped(json.dumps(GOOD))
        assert main(["apply", fd, str(tiny_model_dir), "-o", str(tmp_path / "out")]) == 0, capsys.readouterr().err
        config = json.loads((tmp_path / "out" / "config.json").read_text())
        assert config["rope_scaling"]["long_factor"] == GOOD["rope_scaling"]["long_factor"]
        fd = piped("{")
        one_line(capsys, main(["apply", fd, str(tiny_model_dir), "-o", str(tmp_path / "out2")]),
                 f"factors file {fd} is not valid JSON")
        assert not (tmp_path / "out2").exists()
    finally:
        for r in opened:
            os.close(r)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(initializer_range=float("nan")), "holds NaN or Infinity, which JSON cannot carry"),
    (lambda c: c.update(rope_parameters="default"), "rope_parameters must be an object, got str"),
])
def test_apply_refuses_a_model_config_it_cannot_write_back(edit, message, tmp_path, capsys, tiny_model_dir):
    """A model config.json with NaN (Python's json reads it) or a rope_parameters that is no object:
    a traceback after the output folder was made (left empty); now one line, nothing made."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    edit(config)
    (model / "config.json").write_text(json.dumps(config))
    (tmp_path / "f.json").write_text(json.dumps(GOOD))
    one_line(capsys, main(["apply", str(tmp_path / "f.json"), str(model), "-o", str(tmp_path / "out")]), message)
    assert not (tmp_path / "out").exists()


def test_apply_raises_generation_configs_max_length_and_puts_l0_in_a_phi3_forms_rope(tmp_path, capsys,
                                                                                     tiny_model_dir):
    """generation_config.json's max_length of L0 made generate() refuse a long prompt without
    max_new_tokens (raised now, as the tokenizer's model_max_length is); a phi3-form file applied to
    a Llama left original_max_position_embeddings out of the rope dict, where vLLM reads it."""
    import shutil

    from longrope.runs.export import phi3_rope_scaling

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "generation_config.json").write_text(json.dumps({"max_length": 32, "do_sample": False}))
    phi3 = {**GOOD, "rope_scaling": phi3_rope_scaling(GOOD["rope_scaling"])}
    assert "original_max_position_embeddings" not in phi3["rope_scaling"]
    (tmp_path / "f.json").write_text(json.dumps(phi3))
    assert main(["apply", str(tmp_path / "f.json"), str(model), "-o", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    assert json.loads((out / "generation_config.json").read_text()) == {"max_length": 128, "do_sample": False}
    assert json.loads((model / "generation_config.json").read_text())["max_length"] == 32  # the source kept
    assert "generation_config.json's max_length 32 is raised to 128" in capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["rope_scaling"]["original_max_position_embeddings"] == 32
    assert transformers.GenerationConfig.from_pretrained(out).max_length == 128
