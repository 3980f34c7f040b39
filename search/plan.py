"""What a search will do, checked before its run directory is written.

`Plan` reads the model's geometry from its config alone (no weights), makes the stages,
checks their seed files and the fine-tune settings, and on `start_backend` makes the workers
and checks them against the stage lengths; `run_search` (driver.py) writes nothing until it
has passed.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable

from longrope.objectives.devices import release_memory
from longrope.objectives.specs import ObjectiveSpec
from longrope.spaces import RopeGeometry, UserError, own_scaling

from .backends import make_backend
from .config import RunConfig
from .finetuning import check_finetune
from .stages import initial_factors, make_stages


def preflight_geometry(cfg: RunConfig) -> RopeGeometry:
    """The model's geometry from its config alone (no weights), for the stages."""
    if cfg.model.path.startswith("synthetic"):
        from longrope.objectives.synthetic import GEOMETRY, parse_cost

        parse_cost(cfg.model.path)
        if cfg.objective.kind != "ppl":  # refused before the run folder is made (its evaluate refuses too)
            raise UserError(f"objective.kind = {cfg.objective.kind!r} needs text to hide a pass key in; the "
                            "synthetic objective scores perplexity only")
        return GEOMETRY
    from longrope.objectives.models import gguf_scaling, read_config, resolve

    config = read_config(*resolve(cfg.model.path))
    geometry = RopeGeometry.from_config(config)
    if (what := gguf_scaling(cfg.model.path)) is not None:
        print(f"note: {cfg.model.path} carries rope scaling of its own ({what}), which transformers' GGUF "
              f"loader drops: candidates are scored against plain θ = {geometry.base:g} at L0 = "
              f"{geometry.original_length} (its context_length), not as llama.cpp runs it; search the "
              "original model (its Hugging Face folder) instead", file=sys.stderr)
    if (kind := own_scaling(config)) is not None:
        print(f"note: {cfg.model.path} already scales its rotary ({kind}): candidates are scored against "
              f"plain θ = {geometry.base:g} at L0 = {geometry.original_length}, so the factors found replace "
              f"that scaling when applied (lengths up to L0 too, without a short stage)", file=sys.stderr)
    return geometry


class Plan:
    """What a search will do, checked before its run directory is written: the model's geometry,
    the stages, their seed files, the objective, and (once started) the checked backend."""

    def __init__(self, cfg: RunConfig, backend=None):
        self.cfg = cfg
        self.geometry = preflight_geometry(cfg)
        self.stages = make_stages(cfg, self.geometry)
        for stage in self.stages:  # seed files are checked before anything is written
            initial_factors(cfg, stage, self.geometry, None)
        self.spec = ObjectiveSpec.from_config(cfg)
        check_finetune(self.spec, cfg.finetune)
        if cfg.finetune.after and backend is not None:
            raise UserError("finetune.after switches the workers' model: let the driver make its workers")
        self.backend = backend
        self.checked = False
        self._made = False

    def start_backend(self):
        """Make the backend (unless one was given) and check it against the stage lengths: the
        model loads and the data holds documents long enough. Once; later calls return it."""
        if not self.checked:
            if self.backend is None:
                self.backend = make_backend(self.spec, self.cfg.workers)
                self._made = True
            self.backend.check([s.length for s in self.stages])
            self.checked = True
        return self.backend

    def use_model(self, make: Callable[[], str]) -> None:
        """Score the stages to come on the model whose path `make()` returns (a fine-tune, run
        here): the workers stop first, since on Ray they may hold the GPUs or CPUs the fine-tune
        needs, and the next `start_backend` (the next stage's) makes new ones; none after the last.
        In-process, the scoring model is let go first too: on a GPU it would sit beside the
        fine-tune's own copy (a 7B model's 14 GB in bf16)."""
        self.close()
        self.backend, self.checked = None, False
        release_memory()
        path = make()
        self.spec = dataclasses.replace(self.spec, model=dataclasses.replace(self.spec.model, path=path))

    def close(self) -> None:
        """Close the backend this plan made, once; a given one is left to its owner."""
        if self._made:
            self._made = False
            self.backend.close()
