"""The run config's shape: its sections as typed dataclasses with commented defaults.

``[model]``, ``[data]`` and ``[objective]`` are the objective's own specs
(objectives/specs.py); ``[space]``, ``[search]`` and ``[workers]`` are defined
here. Each field's comment says what it means and which values it takes (the
paper's defaults where it gives one). Reading, checking and writing TOML is
config.py's job; this module only declares, so stages and proposers can type
against it without importing the validator.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Interval

from longrope.objectives.specs import (
    DataSpec,
    FinetuneSpec,
    Fraction,
    ModelSpec,
    NonNegFloat,
    NonNegInt,
    PosFloat,
    PosInt,
    Probability,
    Seed,
    TaskSpec,
)
from longrope.spaces import N_HAT_PAPER

Backend = Literal["inprocess", "ray"]  # workers.backend


@dataclass
class SpaceConfig:
    targets: list[int] = field(default_factory=lambda: [1024])  # long lengths, ascending, > L0
    short: list[int] = field(default_factory=list)  # short-context lengths, each <= L0
    lambda_max_ratio: Annotated[float, Ge(1)] = 1.25  # λmax = ratio·s (paper 1.25)
    lambda_max: float = 0.0  # fixed λmax of the long stages instead of ratio·s; 0 = use the ratio
    # fixed λmax of the short stages instead of ratio·1 (Phi-3.5's released short factors reach 2.03)
    short_lambda_max: float = 0.0
    step: Annotated[float, Interval(gt=0, le=1)] = 0.01  # λ grid (paper 0.01)
    n_hat: list[int] = field(default_factory=lambda: list(N_HAT_PAPER))  # allowed n̂
    mscale: str | float = "su"  # su | yarn | none | search (one more gene, below) | a fixed float
    mscale_min: PosFloat = 1.0  # mscale = "search": lowest attention scale
    mscale_max: float = 1.5  # mscale = "search": highest (su stays below it while s <= L0^1.25)
    mscale_step: PosFloat = 0.0001  # mscale = "search": its grid (LongRoPE2's mscale search: 1e-4)
    # LongRoPE2 critical dimension: off | auto = ⌈(d/2)·log_θ(L0/2π)⌉ − 1 | a pair index c;
    # pairs below c follow λ_c^(i/c) (NTK anchored at c), pairs from c on are searched with λ >= s
    critical_dim: str | int = "off"
    # critical_dim set: "ntk" = LongRoPE2 (pairs below c follow the rule above) | "search" = the
    # pairs below c are searched too, free in [1, λ_c] as in LongRoPE; only the floor λ >= s stays
    below_critical: Literal["ntk", "search"] = "ntk"
    deployable: bool = False  # fix n̂ = 0 (transformers and vLLM have no n̂)


@dataclass
class SearchConfig:
    sampler: str = "longrope"  # longrope | cmaes | tpe | random
    seed: Seed = 0  # the whole trajectory is a function of this seed
    population: Annotated[int, Gt(0)] = 64  # initial population (paper 64)
    parents: Annotated[int, Gt(0)] = 32  # kept per iteration (paper 32)
    mutants: NonNegInt = 16  # new mutants per iteration (paper 16)
    crossovers: NonNegInt = 16  # new crossovers per iteration (paper 16)
    iterations: NonNegInt = 40  # iterations after the initial population (paper 40)
    mutation_prob: Probability = 0.3  # per-gene mutation probability (paper 0.3)
    crossover_prob: Probability = 0.3  # per-gene crossover probability (paper 0.3)
    sigma: PosFloat = 0.05  # mutation step, as a fraction of (λmax - 1); (λmax - s) with a critical_dim (ntk)
    # methods (spaces.METHODS) or factors .json files whose exact factors start the population
    methods: list[str] = field(default_factory=lambda: ["pi", "ntk", "yarn", "dynamic_ntk"])
    patience: NonNegInt = 20  # early stop: iterations without min_improvement; 0 = never stop early
    min_improvement: NonNegFloat = 0.001  # relative best-ppl gain that resets patience (0.1%; 0: any gain)
    max_evals: NonNegInt = 0  # cap on evaluations per stage; 0 = population + iterations·children
    # stop scoring a candidate that cannot become a parent (objectives/pruning.py): none |
    # exact (a bound; never changes the result) | wilcoxon (exact + a paired signed-rank test;
    # the default because it keeps quality at the lowest cost: README, "Pruning")
    pruner: str = "wilcoxon"
    # wilcoxon: prune when p < this, after at least pruner_startup documents. After k documents the
    # one-sided test's smallest p is 2^-k, so 0.3 and 2 may prune a candidate worse than the cut-off
    # parent on its first two (Optuna's defaults 0.1 and 2 could not before the 4th). The bench at the
    # paper's budget: 0.515x the tokens of no pruning, held-out 1.0000x (pruning_p.py before the
    # generation-0 fix: 0.573x, 1.0005x; with 0.1 and 3: 0.754x, 0.997x)
    pruner_p: Fraction = 0.3
    pruner_startup: Annotated[int, Ge(2)] = 2
    storage: str = ""  # "" = RUN_DIR/journal.log (Optuna journal); or an RDB URL, e.g. sqlite:///x.db


@dataclass
class WorkersConfig:
    backend: Backend = "inprocess"  # inprocess | ray
    count: PosInt = 1  # model replicas (Ray actors)
    num_gpus: NonNegFloat = 0.0  # GPUs per replica: 0 (CPU), 1, or a share (0.25: four a GPU)
    num_cpus: NonNegFloat = 1.0  # CPUs per replica
    address: str = ""  # existing Ray cluster ("auto", "ray://..."); "" = RAY_ADDRESS or local
    batch_docs: PosInt = 1  # documents per forward when scoring perplexity (halved on GPU OOM)


@dataclass
class RunConfig:
    model: ModelSpec = field(default_factory=ModelSpec)  # [model]: objectives/specs.py
    data: DataSpec = field(default_factory=DataSpec)  # [data]: objectives/specs.py
    objective: TaskSpec = field(default_factory=TaskSpec)  # [objective]: objectives/specs.py
    space: SpaceConfig = field(default_factory=SpaceConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)  # [finetune]: objectives/specs.py

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    @property
    def children(self) -> int:
        return self.search.mutants + self.search.crossovers

    def full_budget(self) -> int:
        """Evaluations per stage before max_evals: population + iterations × children."""
        return self.search.population + self.search.iterations * self.children

    def budget(self) -> int:
        """Evaluations per stage: full_budget, capped by max_evals."""
        full = self.full_budget()
        return min(full, self.search.max_evals) if self.search.max_evals else full
