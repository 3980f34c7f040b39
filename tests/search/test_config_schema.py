"""The run config's types, choices and bounds, checked by pydantic from the schema's annotations:
every error is one line naming ``section.key``; the TOML writer (tomli-w) round-trips."""

import dataclasses
import tomllib
from typing import Annotated, Literal, get_args, get_origin, get_type_hints

import pytest

from longrope.objectives.specs import DataSpec, FinetuneSpec, ModelSpec, TaskSpec
from longrope.search import config
from longrope.search.schema import SearchConfig, SpaceConfig, WorkersConfig
from longrope.spaces import UserError

SECTIONS = {"model": ModelSpec, "data": DataSpec, "objective": TaskSpec, "space": SpaceConfig,
            "search": SearchConfig, "workers": WorkersConfig, "finetune": FinetuneSpec}


def error(text: str) -> str:
    with pytest.raises(UserError) as e:
        config.from_dict(tomllib.loads(text))
    message = str(e.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("section, key, value, message", [
    ("model", "threads", "'2'", "model.threads must be int, got '2'"),
    ("model", "path", "1", "model.path must be str, got 1"),
    ("data", "per_line", "1", "data.per_line must be bool, got 1"),
    ("data", "search_docs", "5.0", "data.search_docs must be int, got 5.0"),
    ("objective", "depths", "2.5", "objective.depths must be int, got 2.5"),
    ("space", "targets", "[1024, '2k']", "space.targets must be list of int, got [1024, '2k']"),
    ("space", "n_hat", "4", "space.n_hat must be list of int, got 4"),
    ("space", "mscale", "true", "space.mscale must be a policy name or a number, got True"),
    ("space", "critical_dim", "[1]", 'space.critical_dim must be "off", "auto" or a pair index, got [1]'),
    ("search", "sampler", "3", "search.sampler must be str, got 3"),
    ("search", "mutation_prob", "'0.3'", "search.mutation_prob must be float, got '0.3'"),
    ("workers", "num_gpus", "'1'", "workers.num_gpus must be float, got '1'"),
    ("finetune", "lora_targets", "'q_proj'", "finetune.lora_targets must be list of str, got 'q_proj'"),
    ("finetune", "s2_attn", "'yes'", "finetune.s2_attn must be bool, got 'yes'"),
])
def test_a_wrong_type_is_one_line_naming_the_key(section, key, value, message):
    assert error(f"[{section}]\n{key} = {value}\n") == message


@pytest.mark.parametrize("section", list(SECTIONS))
def test_an_unknown_key_is_one_line_naming_the_key_and_the_section(section):
    known = ", ".join(f.name for f in dataclasses.fields(SECTIONS[section]))
    assert error(f"[{section}]\ncolour = 1\n") == f"unknown key 'colour' in [{section}]; known: {known}"


@pytest.mark.parametrize("section, key, value, message", [
    ("model", "dtype", "'fp8'", "model.dtype = 'fp8'; choose one of auto, float32, bfloat16, float16"),
    ("model", "threads", "-1", "model.threads = -1 must be >= 0"),
    ("data", "search_docs", "0", "data.search_docs = 0 must be >= 1"),
    ("objective", "kind", "'passkey'", "objective.kind = 'passkey'; choose one of ppl, needle"),
    ("objective", "per_depth", "0", "objective.per_depth = 0 must be >= 1"),
    ("space", "step", "1.5", "space.step = 1.5 must be in (0, 1]"),
    ("space", "lambda_max_ratio", "0.9", "space.lambda_max_ratio = 0.9 must be >= 1"),
    ("space", "mscale_step", "0", "space.mscale_step = 0.0 must be positive"),
    ("search", "pruner_p", "1", "search.pruner_p = 1.0 must be in (0, 1)"),
    ("search", "pruner_startup", "1", "search.pruner_startup = 1 must be >= 2"),
    ("search", "crossover_prob", "-0.1", "search.crossover_prob = -0.1 must be in [0, 1]"),
    ("search", "parents", "0", "search.parents = 0 must be positive"),
    ("search", "mutants", "-1", "search.mutants = -1 must be >= 0"),
    ("workers", "backend", "'dask'", "workers.backend = 'dask'; choose one of inprocess, ray"),
    ("workers", "num_cpus", "-1", "workers.num_cpus = -1.0 must be >= 0"),
    ("workers", "batch_docs", "0", "workers.batch_docs = 0 must be >= 1"),
    ("finetune", "lr", "0", "finetune.lr = 0.0 must be in (0, 1)"),
    ("finetune", "lora_alpha", "-1.5", "finetune.lora_alpha = -1.5 must be positive"),
    ("finetune", "steps", "0", "finetune.steps = 0 must be >= 1"),
])
def test_an_out_of_range_value_is_one_line_naming_the_key(section, key, value, message):
    assert error(f"[{section}]\n{key} = {value}\n") == message


SPECS = {"model": ModelSpec, "data": DataSpec, "objective": TaskSpec, "finetune": FinetuneSpec}


def _outside(hint) -> object:
    """A value just outside an ``Annotated`` field's bounds (or a choice a ``Literal`` lacks)."""
    if get_origin(hint) is Literal:
        return "nonsense"
    b = {k: getattr(m, k) for m in hint.__metadata__ for k in ("gt", "ge", "lt", "le")
         if getattr(m, k, None) is not None}
    step = 1 if get_args(hint)[0] is int else 0.5
    return b["gt"] if "gt" in b else b["ge"] - step


BOUNDED = [(section, f.name) for section, cls in SPECS.items()
           for f in dataclasses.fields(cls)
           if get_origin(h := get_type_hints(cls, include_extras=True)[f.name]) is Literal
           or (get_origin(h) is Annotated and any(hasattr(m, "ge") or hasattr(m, "gt") for m in h.__metadata__))]


@pytest.mark.parametrize("section, key", BOUNDED)
def test_a_spec_built_in_code_is_refused_like_its_config_section(section, key):
    """The bench and `longrope eval` build specs without the TOML reader: their own `validate`
    gives the reader's message for every field with choices or bounds (one check, fields.py)."""
    cls = SPECS[section]
    bad = _outside(get_type_hints(cls, include_extras=True)[key])
    from_toml = error(f"[{section}]\n{key} = {bad!r}\n".replace("'", '"'))
    with pytest.raises(UserError) as e:
        cls(**{key: bad}).validate(section)
    assert str(e.value) == from_toml


def test_the_specs_bounded_fields_are_all_covered():
    assert {"model.threads", "model.dtype", "data.search_docs", "data.stream_docs", "objective.depths",
            "finetune.lr", "finetune.steps", "finetune.short_mix", "finetune.lora_alpha"} <= {
        f"{s}.{k}" for s, k in BOUNDED}


@pytest.mark.parametrize("where", ["search.seed", "model.threads", "data.split_seed", "objective.depths",
                                   "finetune.steps", "workers.count", "search.population"])
def test_a_bool_is_not_an_int(where):
    section, key = where.split(".")
    assert error(f"[{section}]\n{key} = true\n") == f"{where} must be int, got True"


def test_an_int_stands_for_a_float():
    cfg = config.from_dict(tomllib.loads("[workers]\nnum_gpus = 1\n[finetune]\nlora_alpha = 8\n"
                                         "[space]\nmscale = 2\nlambda_max = 3\n"))
    for value in (cfg.workers.num_gpus, cfg.finetune.lora_alpha, cfg.space.mscale, cfg.space.lambda_max):
        assert type(value) is float
    assert (cfg.workers.num_gpus, cfg.finetune.lora_alpha, cfg.space.mscale) == (1.0, 8.0, 2.0)


@pytest.mark.parametrize("where", ["space.step", "space.lambda_max", "space.mscale", "search.sigma",
                                   "workers.num_cpus", "finetune.lr", "finetune.lora_alpha"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_nan_and_inf_are_refused(where, value):
    section, key = where.split(".")
    assert error(f"[{section}]\n{key} = {value}\n") == f"{where} must be a finite number, got {float(value)!r}"


def test_sections_are_the_dataclasses():
    cfg = config.from_dict({name: {} for name in SECTIONS})
    assert cfg == config.RunConfig()
    assert all(type(getattr(cfg, name)) is cls for name, cls in SECTIONS.items())


def test_the_default_config_round_trips():
    cfg = config.RunConfig()
    assert config.from_dict(tomllib.loads(config.dumps(cfg))) == cfg


def test_a_config_with_every_section_changed_round_trips():
    changed = {
        "model": {"path": 'C:\\models\\"odd" name é', "dtype": "bfloat16", "threads": 3, "tokenizer": "tok"},
        "data": {"path": "x.jsonl", "per_line": True, "streaming": True, "stream_docs": 40, "search_docs": 7},
        "objective": {"kind": "needle", "depths": 3, "seed": 11},
        "space": {"targets": [256, 512], "short": [32], "step": 0.005, "n_hat": [0, 2], "mscale": 1.125,
                  "critical_dim": 3, "deployable": True, "lambda_max": 9.5},
        "search": {"sampler": "cmaes", "seed": 5, "population": 8, "parents": 4, "methods": [],
                   "min_improvement": 1e-7, "pruner": "wilcoxon", "pruner_p": 0.05, "max_evals": 100},
        "workers": {"backend": "ray", "count": 2, "num_gpus": 0.5, "address": "ray://h:10001", "batch_docs": 4},
        "finetune": {"after": [512], "steps": 3, "lr": 1e-4, "lora_targets": ["q_proj"], "s2_attn": False},
    }
    cfg = config.from_dict(changed)
    default = config.RunConfig()
    assert all(getattr(cfg, name) != getattr(default, name) for name in SECTIONS)
    again = config.from_dict(tomllib.loads(config.dumps(cfg)))
    assert again == cfg and again.to_dict() == cfg.to_dict()


def test_a_searched_mscale_and_auto_critical_dim_round_trip():
    cfg = config.from_dict({"space": {"mscale": "search", "critical_dim": "auto"}})
    assert config.from_dict(tomllib.loads(config.dumps(cfg))) == cfg
