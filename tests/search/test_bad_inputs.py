"""Every bad input: exit code 2, one line on stderr naming the problem, no traceback,
and no change to any run directory."""

import json

import pytest
import transformers

from longrope.search.cli import main

SYN = '[model]\npath = "synthetic"\n[space]\ntargets = [256]\n[search]\npopulation = 4\nparents = 2\n' \
      'mutants = 1\ncrossovers = 1\niterations = 1\n'


def snapshot(path):
    if not path.exists():
        return None
    return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else b"")
                  for p in path.rglob("*"))


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("existing")
    (d / "cfg.toml").write_text(SYN)
    assert main(["search", str(d / "cfg.toml"), "--run-dir", str(d / "run"), "--quiet"]) == 0
    return d / "run"


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model_dir):
    d = tmp_path_factory.mktemp("inputs")
    (d / "gpt2").mkdir()
    transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(d / "gpt2")
    (d / "nomodel").mkdir()
    (d / "bad.gguf").write_bytes(b"GGUF but not really")
    (d / "empty").mkdir()
    (d / "empty" / "a.txt").write_text("   \n")
    (d / "short").mkdir()
    (d / "short" / "a.txt").write_text("just a few words")
    (d / "d.jsonl").write_text(json.dumps({"body": "hello"}) + "\n")
    (d / "nonmono.json").write_text(json.dumps({"lambdas": [1, 2, 1.5, 3] + [3] * 28}))
    (d / "nhat.json").write_text(json.dumps({"lambdas": [1.0] * 8, "n_hat": 3}))
    (d / "broken.json").write_text("{nope")
    (d / "f.csv").write_text("i,long_factor,short_factor\n0,1.0,1.0\n")  # what export --format csv writes
    (d / "export.json").write_text(json.dumps({"max_position_embeddings": 256, "original_max_position_embeddings": 32,
                                               "rope_scaling": {"rope_type": "longrope", "long_factor": [2.0] * 8,
                                                                "short_factor": [1.0] * 8}}))
    (d / "binary").mkdir()
    (d / "binary" / "a.txt").write_bytes(bytes(range(256)) * 8)
    (d / "notjson.jsonl").write_text("not json at all\n")
    (d / "corrupt.parquet").write_bytes(b"PAR1 but then nothing")
    return d


def assert_one_line_error(rc, err, message):
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and (message is None or message in err), err


def cfg_file(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return str(p)


CONFIG_CASES = {
    "malformed toml": ("[model\n", "is not valid TOML"),
    "unknown key": (SYN + "colour = 1\n", "unknown key 'colour' in [search]"),
    "wrong type": (SYN.replace("population = 4", "population = 'four'"), "search.population must be int"),
    "lambda max below 1": (SYN.replace("[search]", "lambda_max = 0.5\n[search]"),
                           "space.lambda_max = 0.5 must be >= 1"),
    "target not above L0": (SYN.replace("targets = [256]", "targets = [64]"), "not above the model's trained"),
    "short above L0": (SYN.replace("targets = [256]", "targets = [256]\nshort = [100]"), "space.short: 100 exceeds"),
    "budget negative": (SYN.replace("iterations = 1", "iterations = 1\nmax_evals = -3"), "search.max_evals = -3"),
    "budget zero population": (SYN.replace("population = 4", "population = 0"), "search.population = 0"),
    "workers zero": (SYN + "[workers]\ncount = 0\n", "workers.count = 0 must be >= 1"),
    "missing model": (SYN.replace('"synthetic"', '"/no/such/model"'), "model path /no/such/model does not exist"),
    "unknown method": (SYN.replace("iterations = 1", "iterations = 1\nmethods = ['yarm']"), "unknown method 'yarm'"),
    # issue 13: refused before the run directory exists, naming the key
    "sigma nan": (SYN + "sigma = nan\n", "search.sigma must be a finite number, got nan"),
    "mscale inf": (SYN.replace("[search]", "mscale = inf\n[search]"), "space.mscale must be a finite number"),
    "one-point short stage": (SYN.replace("targets = [256]", "targets = [256]\nshort = [32]\nlambda_max_ratio = 1.0\n"
                                          "deployable = true"), "short-32: the space holds one candidate"),
    "needle on synthetic": (SYN + '[objective]\nkind = "needle"\n', "the synthetic objective scores perplexity only"),
    "unknown storage url": (SYN + "storage = 'nosuchdb://x/y'\n", "search.storage = 'nosuchdb://x/y' is not"),
    # a known database whose file cannot be made: opened before the run directory is
    "storage that cannot open": (SYN + "storage = 'sqlite:////no/such/dir/x.db'\n", "cannot open storage"),
    "patience negative": (SYN + "patience = -1\n", "search.patience = -1 must be >= 0"),
    "min_improvement nan": (SYN + "min_improvement = nan\n", "search.min_improvement must be a finite"),
    "num_cpus nan": (SYN + "[workers]\nnum_cpus = nan\n", "workers.num_cpus must be a finite number"),
    "repeated short lengths": (SYN.replace("targets = [256]", "targets = [256]\nshort = [32, 32]"),
                               "space.short must be ascending without repeats"),
    "threads negative": ("[model]\npath = 'synthetic'\nthreads = -2\n" + SYN.split("\n", 2)[2],
                         "model.threads = -2 must be >= 0"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config(case, tmp_path, capsys):
    text, message = CONFIG_CASES[case]
    run_dir = tmp_path / "run"
    rc = main(["search", cfg_file(tmp_path, text), "--run-dir", str(run_dir), "--quiet"])
    assert_one_line_error(rc, capsys.readouterr().err, message)
    assert not run_dir.exists()


def test_config_that_is_not_utf8(tmp_path, capsys):
    p = tmp_path / "c.toml"
    p.write_bytes(SYN.encode() + b"# caf\xe9\n")
    rc = main(["search", str(p), "--run-dir", str(tmp_path / "run"), "--quiet"])
    assert_one_line_error(rc, capsys.readouterr().err, "is not UTF-8 text (byte")
    assert not (tmp_path / "run").exists()


def model_case(files, tiny, corpus, key):
    return {
        "model folder without config.json": (f'"{files / "nomodel"}"', None, "has no config.json"),
        "model without rope": (f'"{files / "gpt2"}"', None, "has no rotary position embedding"),
        "gguf that is not a model": (f'"{files / "bad.gguf"}"', None, "cannot read the GGUF file"),
        "data path missing": (f'"{tiny}"', f'"{files / "nope"}"', "does not exist"),
        "empty corpus": (f'"{tiny}"', f'"{files / "empty"}"', "holds no non-empty documents"),
        "no document reaches target": (f'"{tiny}"', f'"{files / "short"}"', "documents reach 256 tokens"),
        "text column missing": (f'"{tiny}"', f'"{files / "d.jsonl"}"', "has no column 'text'"),
        "non-monotone factors file": (f'"{tiny}"', f'"{corpus}"', "below λ[1]"),
        "n_hat outside the set": (f'"{tiny}"', f'"{corpus}"', "n_hat = 3 is not one of"),
        "data of random bytes": (f'"{tiny}"', f'"{files / "binary"}"', "is not UTF-8 text"),
        "jsonl that is not JSON": (f'"{tiny}"', f'"{files / "notjson.jsonl"}"', "JSON parse error"),
        "corrupt parquet": (f'"{tiny}"', f'"{files / "corrupt.parquet"}"', "cannot read"),
        "unreachable hub dataset": (f'"{tiny}"', '"someone/no-such-dataset"', "dataset 'someone/no-such-dataset'"),
    }[key]


FACTOR_FILES = {"non-monotone factors file": "nonmono8.json", "n_hat outside the set": "nhat.json"}


@pytest.mark.parametrize("case", ["model folder without config.json", "model without rope",
                                  "gguf that is not a model", "data path missing", "empty corpus",
                                  "no document reaches target", "text column missing",
                                  "non-monotone factors file", "n_hat outside the set",
                                  "data of random bytes", "jsonl that is not JSON", "corrupt parquet",
                                  "unreachable hub dataset"])
def test_bad_model_or_data(case, tmp_path, capsys, files, tiny_model_dir, text_corpus_dir):
    (files / "nonmono8.json").write_text(json.dumps({"lambdas": [1, 2, 1.5, 3, 3, 3, 3, 3]}))
    model, data, message = model_case(files, tiny_model_dir, text_corpus_dir, case)
    text = SYN.replace('"synthetic"', model).replace("targets = [256]", "targets = [256]\ndeployable = false")
    if data:
        text += f"[data]\npath = {data}\nsearch_docs = 2\nheldout_docs = 1\n"
    if case in FACTOR_FILES:
        text = text.replace("iterations = 1", f"iterations = 1\nmethods = ['{files / FACTOR_FILES[case]}']")
    run_dir = tmp_path / "run"
    rc = main(["search", cfg_file(tmp_path, text), "--run-dir", str(run_dir), "--quiet"])
    assert_one_line_error(rc, capsys.readouterr().err, message)
    assert not run_dir.exists()


def test_cli_flags_budget_and_workers(tmp_path, capsys):
    for flags, message in ((["--max-evals", "0"], "--max-evals must be >= 1"),
                           (["--workers", "0"], "--workers must be >= 1")):
        rc = main(["search", cfg_file(tmp_path, SYN), "--run-dir", str(tmp_path / "r"), *flags])
        assert_one_line_error(rc, capsys.readouterr().err, message)
        assert not (tmp_path / "r").exists()


def test_max_evals_above_the_budget_says_it_only_caps(tmp_path, capsys):
    """A cap that looks like a raise (a finished run resumed with --max-evals 48, where a stage
    runs 6) ran nothing more and said only "done": it now says why and what raises the budget."""
    run = str(tmp_path / "r")
    assert main(["search", cfg_file(tmp_path, SYN), "--run-dir", run, "--quiet", "--max-evals", "6"]) == 0
    assert "note:" not in capsys.readouterr().err  # 6 = population 4 + 1 iteration x 2 children
    assert main(["resume", run, "--quiet", "--max-evals", "7"]) == 0
    assert "--max-evals 7 only caps a stage's evaluations, here population + iterations x children = 6; " \
           "to run more, raise search.iterations" in capsys.readouterr().err


RUN_CASES = {
    "resume a non-run": (lambda run, f, t: ["resume", str(t)], "is not a run directory"),
    "resume --run-dir a non-run": (lambda run, f, t: ["resume", "--run-dir", str(t)], "is not a run directory"),
    "resume no run dir": (lambda run, f, t: ["resume"], "the run directory is required"),
    "status two run dirs": (lambda run, f, t: ["status", str(run), "--run-dir", str(t)],
                            "two run directories given"),
    "changed search-defining key": (lambda run, f, t: ["search", cfg_file(t, SYN.replace(
        "iterations = 1", "iterations = 1\nseed = 5")), "--run-dir", str(run)], "search.seed: 0 -> 5"),
    "export unknown target": (lambda run, f, t: ["export", str(run), "--target", "999"],
                              "no long result for length 999"),
    # another storage holds none of the run's trials: refused, not a search started over
    "changed storage": (lambda run, f, t: ["search", cfg_file(t, SYN + f"storage = 'sqlite:///{t}/o.db'\n"),
                                           "--run-dir", str(run)], "keeps its evaluations in another storage"),
    # output paths under a file: one line, before any work (eval's --plot before the evaluation)
    "export -o under a file": (lambda run, f, t: ["export", str(run), "-o", str(f / "export.json" / "x.json")],
                               "a file is in the way"),
    "eval --plot under a file": (lambda run, f, t: ["eval", "--model", "synthetic", "--lengths", "256", "--task",
                                                    "passkey", "--plot", str(f / "export.json" / "p.png")],
                                 "cannot create folder for --plot"),
    "eval --tail with passkey": (lambda run, f, t: ["eval", "--model", "synthetic", "--lengths", "256", "--task",
                                                    "passkey", "--tail"], "--tail (last-quarter perplexity) goes"),
    "eval --per-line on a table": (lambda run, f, t: ["eval", "--data", str(f / "d.jsonl"), "--per-line",
                                                      "--lengths", "256"], "data.per_line reads .txt files"),
    "eval --per-line on builtin:sotu": (lambda run, f, t: ["eval", "--per-line", "--lengths", "256"],
                                        "builtin:sotu is a builtin corpus"),  # was: ignored
    "demo --max-evals 0": (lambda run, f, t: ["demo", "--max-evals", "0", "--run-dir", str(t / "d")],
                           "--max-evals must be >= 1, got 0"),  # was: the demo's default budget
    "demo --max-evals negative": (lambda run, f, t: ["demo", "--max-evals", "-1", "--run-dir", str(t / "d")],
                                  "--max-evals must be >= 1, got -1"),  # was: a run no resume could read
    "demo --run-dir a file": (lambda run, f, t: ["demo", "--run-dir", str(f / "export.json")],
                              "exists and is not a directory"),  # was: NotADirectoryError's traceback
    "demo --run-dir a folder of other files": (lambda run, f, t: ["demo", "--run-dir", str(f)],
                                               "exists and is not empty"),
    "bench --only empty": (lambda run, f, t: ["bench", "--quick", "--only", " ,", "--out", str(t)],
                           "--only names no section"),  # was: every section, hours of a full bench
    "eval passkey on synthetic": (lambda run, f, t: ["eval", "--model", "synthetic", "--lengths", "256", "--task",
                                                     "passkey"], "scores perplexity only"),  # was: KeyError
    "eval needle on synthetic": (lambda run, f, t: ["eval", "--model", "synthetic", "--lengths", "256", "--task",
                                                    "needle"], "scores perplexity only"),  # was: ppl as needle's
    "eval --plot a folder": (lambda run, f, t: ["eval", "--model", "synthetic", "--lengths", "256", "--task",
                                                "passkey", "--plot", str(t)], "is a folder; name a file"),
    "apply to a non-model": (lambda run, f, t: ["apply", str(f / "export.json"), str(f / "nomodel"),
                                                "-o", str(t / "out")], "is not a model folder"),
    "eval unknown method": (lambda run, f, t: ["eval", "--model", "synthetic", "--lengths", "256",
                                               "--methods", "yarm"], None),
    "eval malformed factors file": (lambda run, f, t: ["eval", "--model", "synthetic", "--lengths", "256",
                                                       "--methods", str(f / "broken.json")], "malformed"),
    "eval non-monotone factors file": (lambda run, f, t: ["eval", "--model", "synthetic", "--lengths",
                                                          "256", "--methods", str(f / "nonmono.json")], "below λ[1]"),
    # the config validators' messages, in eval's flags (data.stream_docs = 5 needs data.streaming = true)
    "eval --stream-docs alone": (lambda run, f, t: ["eval", "--model", "synthetic", "--lengths", "256",
                                                    "--stream-docs", "5"], "--stream-docs 5 needs --streaming"),
    "eval --threads -1": (lambda run, f, t: ["eval", "--model", "synthetic", "--lengths", "256", "--threads", "-1"],
                          "--threads -1 must be >= 0"),
    "eval --key-seed -1": (lambda run, f, t: ["eval", "--model", "synthetic", "--lengths", "256", "--task",
                                              "needle", "--key-seed", "-1"], "--key-seed -1 must be in [0, "),
    "eval --per-depth with ppl": (lambda run, f, t: ["eval", "--model", "synthetic", "--lengths", "256",
                                                     "--per-depth", "2"], "--per-depth and --key-seed go with"),
    "eval a CSV export": (lambda run, f, t: ["eval", "--model", "synthetic", "--lengths", "256",
                                             "--methods", str(f / "f.csv")], "is a CSV export, a table to read"),
    "apply a CSV export": (lambda run, f, t: ["apply", str(f / "f.csv"), "builtin:tiny-sotu", "-o", str(t / "o")],
                           "is a CSV export, a table to read"),  # was: "factors JSON is malformed"
    "eval --tokenizer missing": (lambda run, f, t: ["eval", "--lengths", "256", "--tokenizer", str(t / "nope")],
                                 "tokenizer: path"),  # was: "model path ... does not exist"
    "search a run directory as its config": (lambda run, f, t: ["search", str(run), "--run-dir", str(t / "r")],
                                             "is a folder (a run directory: config.toml inside)"),
    "eval bad lengths": (lambda run, f, t: ["eval", "--lengths", "1k"], "--lengths must be"),
    "eval malformed lm_infinite": (lambda run, f, t: ["eval", "--model", "synthetic", "--lengths", "256",
                                                      "--methods", "none,lm_infinite:global=4,local=0"],
                                   "write lm_infinite or lm_infinite:global=G,local=W"),
    "eval stride above a length": (lambda run, f, t: ["eval", "--model", "synthetic", "--lengths", "256,128",
                                                      "--stride", "200"], "--stride must be between 1 and"),
    # a file as the run: "(it does not exist)" it said; under a file: said only once the model had loaded
    "resume a file": (lambda run, f, t: ["resume", str(f / "export.json")], "is a file, not a run directory"),
    "status a file": (lambda run, f, t: ["status", str(f / "export.json")], "is a file, not a run directory"),
    "search --run-dir under a file": (lambda run, f, t: ["search", cfg_file(t, SYN), "--run-dir",
                                                         str(f / "export.json" / "run")], "export.json is a file"),
    "eval stride with passkey": (lambda run, f, t: ["eval", "--model", "synthetic", "--lengths", "256",
                                                    "--stride", "64", "--task", "passkey"],
                                 "--stride goes with --task ppl"),
}


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_bad_run_commands(case, existing_run, files, tmp_path, capsys):
    make, message = RUN_CASES[case]
    before = snapshot(existing_run)
    rc = main(make(existing_run, files, tmp_path))
    assert_one_line_error(rc, capsys.readouterr().err, message)
    assert snapshot(existing_run) == before


def test_run_dir_either_way(existing_run, capsys):
    """The verbs that read a run take --run-dir as `search` spells it, or RUN_DIR: the same output."""
    outs = []
    for argv in (["status", str(existing_run), "--json"], ["status", "--run-dir", str(existing_run), "--json"],
                 ["status", str(existing_run), "--run-dir", str(existing_run), "--json"]):
        assert main(argv) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0]["run"] == outs[1]["run"] == outs[2]["run"] == str(existing_run)
    assert outs[0]["stages"] == outs[1]["stages"] == outs[2]["stages"] != []


def test_model_folder_without_tokenizer(tmp_path, capsys, tiny_model_dir, text_corpus_dir):
    """Refused naming the tokenizer before any weights load (the weights here are garbage);
    --tokenizer supplies one."""
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_bytes((tiny_model_dir / "config.json").read_bytes())
    (bare / "model.safetensors").write_bytes(b"not weights")
    argv = ["eval", "--model", str(bare), "--data", str(text_corpus_dir), "--lengths", "32", "--samples", "1",
            "--methods", "none"]
    assert_one_line_error(main(argv), capsys.readouterr().err, "cannot load a tokenizer from")
    rc = main(argv + ["--tokenizer", str(tiny_model_dir)])  # now the garbage weights are reached
    assert_one_line_error(rc, capsys.readouterr().err, "cannot load model")
    (bare / "model.safetensors").write_bytes((tiny_model_dir / "model.safetensors").read_bytes())
    assert main(argv + ["--tokenizer", str(tiny_model_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["none"]["32"] > 1
    tok = tmp_path / "tok"  # a tokenizer's own folder, no config.json: refused as no model folder before
    tok.mkdir()
    for f in tiny_model_dir.glob("*"):
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            (tok / f.name).write_bytes(f.read_bytes())
    assert main(argv + ["--tokenizer", str(tok), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["none"]["32"] > 1


def test_a_ctrl_c_inside_an_extensions_import_while_the_model_loads_is_an_interrupt(monkeypatch, capsys):
    """A Ctrl-C landing in a C extension's import comes out as pybind11's ImportError("initialization
    failed") raised from the KeyboardInterrupt: it was "error: cannot load model ...", exit 2 (seen
    once in ~30 Ctrl-Cs during a load). Now it is the interrupt (130); a real ImportError stays 2."""
    import transformers

    from longrope.spaces import reraise_interrupt

    def failed_import(interrupt: bool):
        def from_pretrained(*a, **kw):
            try:
                raise KeyboardInterrupt if interrupt else OSError("libfoo.so: cannot open")
            except BaseException as e:
                raise ImportError("initialization failed") from e
        return from_pretrained

    argv = ["eval", "--lengths", "256", "--samples", "1", "--methods", "none"]
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", failed_import(True))
    assert main(argv) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted"
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", failed_import(False))
    assert_one_line_error(main(argv), capsys.readouterr().err, "cannot load model builtin:tiny-sotu: "
                                                               "ImportError: initialization failed")
    import datasets

    for owner, name in ((transformers.AutoConfig, "from_pretrained"), (transformers.AutoTokenizer, "from_pretrained"),
                        (datasets, "load_dataset")):  # the model's config, its tokenizer, the data
        monkeypatch.undo()
        monkeypatch.setattr(owner, name, failed_import(True))
        assert main(argv) == 130, (owner, name)
        assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted"
    looped = ValueError("a")  # an exception chain with a cycle ends
    looped.__context__ = ImportError("b")
    looped.__context__.__context__ = looped
    assert reraise_interrupt(looped) is None
    outer, inner = RuntimeError("outer"), ValueError("inner")
    outer.__cause__, inner.__context__ = inner, KeyboardInterrupt()  # raised while handling an interrupt
    with pytest.raises(KeyboardInterrupt):
        reraise_interrupt(outer)
