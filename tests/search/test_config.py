import re
import subprocess
import sys
import tomllib
from importlib.resources import files

import numpy as np
import pytest

from longrope.search import config
from longrope.spaces import UserError


def load_text(tmp_path, text):
    p = tmp_path / "run.toml"
    p.write_text(text)
    return config.load(p)


def test_example_equals_defaults_and_round_trips():
    text = files("longrope.search").joinpath("example.toml").read_text()
    cfg = config.from_dict(tomllib.loads(text))
    assert cfg == config.RunConfig()
    assert config.from_dict(tomllib.loads(config.dumps(cfg))) == cfg
    assert cfg.budget() == 64 + 40 * 32


@pytest.mark.parametrize("max_evals, budget", [(0, 6), (5, 5), (6, 6), (100, 6)])
def test_max_evals_caps_the_budget_and_never_raises_it(max_evals, budget):
    """max_evals above population + iterations × children would run the search past its iterations."""
    cfg = config.from_dict({"search": {"population": 4, "parents": 2, "iterations": 1, "mutants": 1,
                                       "crossovers": 1, "max_evals": max_evals}})
    assert cfg.budget() == budget


@pytest.mark.parametrize(
    "text, message",
    [
        ("[model\npath=1", "is not valid TOML"),
        ("[modle]\npath='x'", r"unknown section \[modle\]"),
        ("[search]\npopulaton = 3", r"unknown key 'populaton' in \[search\]"),
        ("[search]\npopulation = '64'", "search.population must be int, got '64'"),
        ("[search]\npopulation = true", "search.population must be int"),
        ("[space]\ntargets = [1024, '2k']", "space.targets must be list of int"),
        ("[space]\nlambda_max = 0.5", "space.lambda_max = 0.5 must be >= 1"),
        ("[space]\nshort_lambda_max = 0.9", "space.short_lambda_max = 0.9 must be >= 1"),
        ("[space]\ntargets = [2048, 1024]", "ascending"),
        ("[space]\nmscale = 'sue'", "space.mscale = 'sue'"),
        ("[search]\nmax_evals = -1", "search.max_evals = -1 must be >= 0"),
        ("[search]\nseed = -1", r"search.seed = -1 must be in \[0, 2147483648\)"),
        ("[finetune]\nseed = -2", r"finetune.seed = -2 must be in \[0, 2147483648\)"),
        ("[data]\nsplit_seed = -1", r"data.split_seed = -1 must be in \[0"),
        ("[objective]\nseed = -1", r"objective.seed = -1 must be in \[0"),
        ("[search]\npopulation = 0", "search.population = 0 must be positive"),
        ("[search]\nparents = 80", "search.parents = 80 exceeds search.population = 64"),
        ("[search]\nsampler = 'bayes'", "search.sampler = 'bayes'; choose one of"),
        ("[workers]\ncount = 0", "workers.count = 0 must be >= 1"),
        ("[search]\nmutation_prob = 1.5", r"search.mutation_prob = 1.5 must be in \[0, 1\]"),
        ("[space]\nn_hat = [0, -4]", "space.n_hat must be non-empty, non-negative"),
        ("[space]\ncritical_dim = -1", "space.critical_dim = -1 must be >= 0"),
        ("[space]\ncritical_dim = 'sometimes'", "space.critical_dim = 'sometimes'; use \"off\", \"auto\""),
        ("[space]\ncritical_dim = true", "space.critical_dim must be \"off\", \"auto\" or a pair index"),
        ("[space]\ncritical_dim = 1.5", "space.critical_dim must be \"off\", \"auto\" or a pair index"),
        ("[space]\nmscale = 'searched'", "space.mscale = 'searched'; use su, yarn, none, search or a number"),
        ("[space]\nmscale_min = 1.6", "space.mscale_min = 1.6 exceeds space.mscale_max = 1.5"),
        ("[space]\nmscale_min = 0", "space.mscale_min = 0.0 must be positive"),
        ("[space]\nmscale_step = 0", "space.mscale_step = 0.0 must be positive"),
        ("[space]\nbelow_critical = 'search'", 'space.below_critical = "search" needs space.critical_dim'),
        ("[space]\nbelow_critical = 'free'", "space.below_critical = 'free'; choose one of ntk, search"),
        # an old key name beside its new one: neither silently wins; the old one's type is checked
        ("[search]\nmethods = ['yarn']\nseeds = ['pi']", r"\[search\] has both seeds \(its old name\) and methods"),
        ("[search]\npruner = 'wilcoxon'\nearly_abort = false", r"has both early_abort \(its old name\) and pruner"),
        ("[search]\nearly_abort = 'yes'", "search.early_abort \\(now search.pruner\\) must be true or false"),
        ("[space]\ntargets = [256]\nn_hat = [300]", r"space.n_hat = \[300\]: none is below the target 256"),
        ("[space]\nmscale = 'search'\nmscale_step = 5.0", "space.mscale_step = 5.0 exceeds the grid's span"),
        ("[space]\nmscale = 'search'\nmscale_min = 1.2\nmscale_max = 1.2", "exceeds the grid's span 1.2 to 1.2"),
        ("[data]\nstreaming = true\nstream_docs = 1\nsearch_docs = 2",
         r"data.stream_docs = 1 cannot fill both pools: .* at least twice the larger pool's documents \(10\)"),
        ("[finetune]\nafter = [1024, 1024]", r"finetune.after must be ascending without repeats"),
        # a run without a long stage finished and could never be exported
        ("[space]\ntargets = []\nshort = [64]", "space.targets is empty: a search needs a long target"),
        # Ray's ValueError escaped as a traceback once the workers started
        ("[workers]\nnum_gpus = 1.5", "workers.num_gpus = 1.5: a replica runs on one GPU or a share of one"),
        ("[workers]\nnum_gpus = 2", "workers.num_gpus = 2: a replica runs on one GPU or a share of one"),
        # transformers only warns at load; every forward then raised
        ("[model]\nattention = 'flash_attention_2'\ndtype = 'float32'",
         "model.attention = 'flash_attention_2' runs in bfloat16 or float16, not float32"),
    ],
)
def test_each_bad_value_has_its_message(tmp_path, text, message):
    with pytest.raises(UserError, match=message) as e:
        load_text(tmp_path, text)
    assert "\n" not in str(e.value)


def test_the_documented_minimums_and_defaults_of_data_and_finetune_hold(tmp_path):
    """stream_docs at exactly twice the larger pool fills both; S2-Attn's group is L/4 (LongLoRA's)."""
    cfg = load_text(tmp_path, "[data]\nstreaming = true\nstream_docs = 20\nsearch_docs = 10\nheldout_docs = 4")
    assert cfg.data.stream_docs == 20
    assert cfg.finetune.group(1024) == 256 and cfg.finetune.s2_group == 0


def test_floats_accept_ints_and_mscale_accepts_number(tmp_path):
    cfg = load_text(tmp_path, "[space]\nstep = 1\nmscale = 1.2\n[workers]\nnum_gpus = 1")
    assert cfg.space.step == 1.0 and cfg.space.mscale == 1.2 and cfg.workers.num_gpus == 1.0


def test_defining_diff_names_the_key():
    a = config.RunConfig().to_dict()
    b = config.RunConfig()
    b.space.targets = [2048]
    b.search.iterations = 99
    b.workers.count = 4
    assert config.defining_diff(a, b.to_dict()) == ["space.targets: [1024] -> [2048]"]


def test_a_run_frozen_with_the_old_key_name_still_resumes():
    """search.seeds was renamed search.methods: an older run's config.toml reads the same."""
    old = config.RunConfig().to_dict()
    old["search"]["seeds"] = old["search"].pop("methods")
    assert config.defining_diff(old, config.RunConfig().to_dict()) == []
    assert config.from_dict({"search": {"seeds": ["yarn"]}}).search.methods == ["yarn"]
    old["search"]["seeds"] = ["pi"]
    assert config.defining_diff(old, config.RunConfig().to_dict()) == [
        "search.methods: ['pi'] -> ['pi', 'ntk', 'yarn', 'dynamic_ntk']"]


def test_cli_bad_config_is_one_line_exit_2(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[search]\nseed = 'x'\n")
    r = subprocess.run([sys.executable, "-m", "longrope.search", "config", str(p)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
    assert "search.seed must be int" in r.stderr and "Traceback" not in r.stderr


def test_short_stages_take_their_own_fixed_lambda_max():
    """Short stages search λ in [1, ratio·1] (1.25): Phi-3.5's released short factors reach 2.03,
    out of reach unless lambda_max_ratio widened every long stage too. short_lambda_max sets the
    short bound alone, as lambda_max does the long one; 0 keeps the ratio."""
    from longrope.objectives.synthetic import GEOMETRY
    from longrope.search.stages import make_stages

    def bounds(**space):
        cfg = config.from_dict({"model": {"path": "synthetic"}, "space": {"targets": [256], "short": [32], **space}})
        return [st.space.lambda_max for st in make_stages(cfg, GEOMETRY)]

    assert bounds() == [5.0, 1.25]  # s = 4: 1.25·4; short: 1.25·1
    assert bounds(short_lambda_max=2.5) == [5.0, 2.5]
    assert bounds(lambda_max=6.0) == [6.0, 1.25]
    with pytest.raises(UserError, match=r"short-32: the space holds one candidate .* raise "
                                        r"space.lambda_max_ratio \(or short_lambda_max\)"):
        bounds(short_lambda_max=1.0, n_hat=[0])


def test_critical_dim_and_searched_mscale_per_stage():
    """auto resolves from the model (the synthetic geometry: d 16, θ 10^4, L0 64 -> pair 2); a
    searched mscale starts long stages at su on its grid, short stages keep 1."""
    from longrope.objectives.synthetic import GEOMETRY
    from longrope.search.stages import initial_factors, make_stages
    from longrope.spaces import mscale_su

    cfg = config.from_dict({"model": {"path": "synthetic"}, "space": {
        "targets": [256], "short": [32], "critical_dim": "auto", "mscale": "search", "lambda_max_ratio": 2.5}})
    long, short = make_stages(cfg, GEOMETRY)
    assert long.space.critical_dim == short.space.critical_dim == 2
    assert long.space.gene_min == 4.0 and long.space.lambda_max == 10.0
    assert long.space.mscale_grid == (1.0, 1.5, 0.0001) and long.space.mscale == round(mscale_su(4, 64), 4)
    assert not short.space.searches_mscale and short.space.mscale == 1.0
    seeds = initial_factors(cfg, long, GEOMETRY, None)
    assert {f.mscale for f in seeds} == {long.space.mscale}
    # PI, NTK and YaRN all clip onto λ = s from c on: generation 0 held two distinct seeds. LongRoPE2's
    # anchored ones (λ_c over [s, λmax], +0.1 a pair) follow, each in the space and distinct
    keys = {long.space.key(long.space.clip(f)) for f in seeds}
    assert len(keys) == len(cfg.search.methods) - 2 + 8, [f.lambdas for f in seeds]
    anchored = seeds[len(cfg.search.methods):]
    assert all(long.space.contains(f) for f in anchored)
    assert [f.lambdas[2] for f in anchored] == pytest.approx(np.linspace(4.0, 10.0, 8), abs=0.005)
    assert anchored[0].lambdas[2:] == pytest.approx([4.0 + 0.1 * i for i in range(6)])
    assert config.from_dict({"space": {"critical_dim": 5}}).space.critical_dim == 5
    off = make_stages(config.from_dict({"space": {"targets": [256]}}), GEOMETRY)[0].space
    assert off.critical_dim is None and not off.searches_mscale
    below = make_stages(config.from_dict({"model": {"path": "synthetic"}, "space": {
        "targets": [256], "critical_dim": "auto", "below_critical": "search"}}), GEOMETRY)[0].space
    assert below.search_below and below.first_searched == 0 and below.gene_lows.tolist() == [1, 1] + [4] * 6


@pytest.mark.parametrize("value, message", [
    (8, r"space.critical_dim = 8 is not below the model's 8 rotary frequencies \(d/2; pairs 0..7\)"),
    (100, "space.critical_dim = 100 is not below"),
])
def test_critical_dim_beyond_the_model_is_one_line_naming_the_key(tmp_path, value, message):
    p = tmp_path / "run.toml"
    p.write_text(f'[model]\npath = "synthetic"\n[space]\ntargets = [256]\ncritical_dim = {value}\n')
    r = subprocess.run([sys.executable, "-m", "longrope.search", "search", str(p), "--run-dir",
                        str(tmp_path / "r"), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert re.search(message, r.stderr) and not (tmp_path / "r").exists()


def test_a_critical_dim_needs_searched_lambda_above_s():
    from longrope.objectives.synthetic import GEOMETRY
    from longrope.search.stages import make_stages

    cfg = config.from_dict({"space": {"targets": [256], "critical_dim": 3, "lambda_max": 3.5}})
    with pytest.raises(UserError, match=r"^space.lambda_max at long-256 \(s = 4\): no λ on the 0.01 grid "
                                        r"lies in \[4.0, 3.5\]") as e:
        make_stages(cfg, GEOMETRY)
    assert "\n" not in str(e.value)


def test_a_run_frozen_before_a_default_changed_resumes_with_its_old_value(tmp_path, monkeypatch):
    """finetune.short_mix defaults to 0.5 since session 9: a run whose config.toml was written
    before the key existed trained with 0, and resuming it must too (a new config file gets 0.5)."""
    from longrope.runs import Run
    from longrope.search import driver
    from longrope.search.cli import main

    old = config.RunConfig().to_dict()
    del old["finetune"]["short_mix"]
    assert config.from_dict(config.frozen(old)).finetune.short_mix == 0.0
    assert config.from_dict(old).finetune.short_mix == config.RunConfig().finetune.short_mix == 0.5
    assert config.defining_diff(old, config.RunConfig().to_dict()) == ["finetune.short_mix: 0.0 -> 0.5"]
    text = config.dumps(config.from_dict({"model": {"path": "synthetic"}})).replace("short_mix = 0.5\n", "")
    assert "short_mix" not in text
    Run.create(tmp_path / "run", text)
    seen = []
    monkeypatch.setattr(driver, "run_search", lambda cfg, *a, **k: seen.append(cfg) or {})
    assert main(["resume", str(tmp_path / "run"), "--quiet"]) == 0
    assert seen[0].finetune.short_mix == 0.0


def test_relative_local_paths_are_frozen_absolute(tmp_path, monkeypatch, tiny_model_dir):
    """A config read in one directory means the same to a resume, status or worker in another:
    local paths are anchored to the working directory; builtins, hub ids and methods stay."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").symlink_to(tiny_model_dir)
    (tmp_path / "docs.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "seed.json").write_text("{}")
    cfg = load_text(tmp_path, "[model]\npath = 'm'\ntokenizer = 'builtin:tiny-sotu'\n[data]\npath = 'docs.jsonl'\n"
                    "cache_dir = 'cache'\n[search]\nmethods = ['yarn', 'seed.json']\nstorage = 'sqlite:///o.db'\n")
    assert cfg.model.path == str(tmp_path / "m") and cfg.model.tokenizer == "builtin:tiny-sotu"
    assert cfg.data.path == str(tmp_path / "docs.jsonl") and cfg.data.cache_dir == str(tmp_path / "cache")
    assert cfg.search.methods == ["yarn", str(tmp_path / "seed.json")]
    assert cfg.search.storage == f"sqlite:///{tmp_path / 'o.db'}"  # four slashes: an absolute file
    hub = load_text(tmp_path, "[model]\npath = 'synthetic'\n[data]\npath = 'someone/corpus'\n"
                    "[search]\nstorage = 'postgresql://u:p@db:5432/optuna'\n")
    assert (hub.model.path, hub.data.path, hub.data.cache_dir) == ("synthetic", "someone/corpus", "")
    assert hub.search.storage == "postgresql://u:p@db:5432/optuna"


def test_a_relative_sqlite_storage_is_the_same_database_from_any_directory(tmp_path, monkeypatch, capsys):
    """Before: `status` and `resume` from another directory opened a new empty x.db there (no stage
    started; a resume that searched everything again)."""
    from search_helpers import small_cfg

    from longrope.search.cli import main

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    text = small_cfg(iterations=0)[1].replace("[search]\n", "[search]\nstorage = 'sqlite:///x.db'\n")
    (tmp_path / "a" / "c.toml").write_text(text)
    monkeypatch.chdir(tmp_path / "a")
    assert main(["search", "c.toml", "--run-dir", str(tmp_path / "run"), "--quiet"]) == 0
    monkeypatch.chdir(tmp_path / "b")
    capsys.readouterr()
    assert main(["status", str(tmp_path / "run")]) == 0
    assert "long-256: 12/12 evals" in capsys.readouterr().out
    assert not (tmp_path / "b" / "x.db").exists()


def test_a_moved_rdb_storage_resumes_once_config_toml_names_it(tmp_path, capsys):
    """search.storage may move (a database copied to another server): the stages' recorded
    configs are checked against the edited config.toml for every search-defining key but that."""
    from search_helpers import small_cfg

    from longrope.search.cli import main

    text = small_cfg(iterations=0)[1].replace("[search]\n", f"[search]\nstorage = 'sqlite:///{tmp_path}/a.db'\n")
    (tmp_path / "c.toml").write_text(text)
    assert main(["search", str(tmp_path / "c.toml"), "--run-dir", str(tmp_path / "run"), "--quiet"]) == 0
    (tmp_path / "a.db").rename(tmp_path / "b.db")
    toml = tmp_path / "run" / "config.toml"
    toml.write_text(toml.read_text().replace(f"{tmp_path}/a.db", f"{tmp_path}/b.db"))
    capsys.readouterr()
    assert main(["resume", str(tmp_path / "run"), "--quiet"]) == 0, capsys.readouterr().err
    assert main(["status", str(tmp_path / "run")]) == 0 and "long-256: 12/12 evals" in capsys.readouterr().out
    edited = config.from_dict(tomllib.loads(toml.read_text()))
    edited.search.seed = 1
    toml.write_text(config.dumps(edited))  # the other keys are still checked
    assert main(["resume", str(tmp_path / "run"), "--quiet"]) == 2
    assert "searched with another search.seed" in capsys.readouterr().err


def test_a_run_frozen_before_pruner_startup_existed_resumes_with_the_3_it_used():
    """The Wilcoxon pruner's start-up was fixed at 3 before search.pruner_startup (default 2 since);
    a config.toml written then prunes as it did."""
    old = config.RunConfig().to_dict()
    del old["search"]["pruner_startup"]
    assert config.from_dict(config.frozen(old)).search.pruner_startup == 3
    assert config.from_dict(config.frozen(config.RunConfig().to_dict())).search.pruner_startup == 2


def test_a_config_written_with_a_byte_order_mark_loads(tmp_path):
    """Some Windows editors start UTF-8 files with a BOM, which tomllib calls 'Invalid statement'."""
    (tmp_path / "c.toml").write_text("\ufeff[search]\npopulation = 8\nparents = 4\n", encoding="utf-8")
    assert config.load(tmp_path / "c.toml").search.population == 8


def test_a_short_stage_at_the_trained_length_is_a_stage_and_a_seeded_best_takes_its_mscale():
    """A short stage at L0 (Phi-3's 4k) was caught only by the 158-s bench; with mscale searched,
    the previous stage's best is seeded with this stage's starting mscale, not its own."""
    from longrope.objectives.synthetic import GEOMETRY
    from longrope.search.stages import initial_factors, make_stages
    from longrope.spaces import RescaleFactors

    cfg = config.from_dict({"model": {"path": "synthetic"}, "space": {"targets": [256], "short": [64]}})
    assert [s.name for s in make_stages(cfg, GEOMETRY)] == ["long-256", "short-64"]
    cfg = config.from_dict({"model": {"path": "synthetic"}, "space": {"targets": [256, 512], "mscale": "search"}})
    stage = make_stages(cfg, GEOMETRY)[1]
    prev = RescaleFactors.uniform(4.0, 8, mscale=1.3)
    assert initial_factors(cfg, stage, GEOMETRY, prev)[0].mscale == stage.space.mscale != 1.3
