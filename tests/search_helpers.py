"""Small synthetic runs and trajectory comparison for search and runs tests."""

from __future__ import annotations

import os
import subprocess
import sys

from longrope.runs import Run
from longrope.runs.vocab import REQUEUED, SLOT
from longrope.search import config
from longrope.search.driver import Driver

# LongRoPE2's options on the synthetic model: critical dimension pair 2, mscale searched, λ <= 2.5 s
LONGROPE2 = 'critical_dim = "auto"\nmscale = "search"\nlambda_max_ratio = 2.5'

SMALL = """
[model]
path = "{model}"
[space]
targets = [256]
short = {short}
{space}
[search]
population = 12
parents = 6
mutants = 3
crossovers = 3
iterations = {iterations}
seed = {seed}
sampler = "{sampler}"
{pruner}
[data]
heldout_docs = 1
[workers]
backend = "{backend}"
count = {count}
num_gpus = {num_gpus}
"""


def cli(*args, **kw) -> subprocess.Popen:
    """`longrope ARGS` in a subprocess (one that can be killed), output captured as text."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    return subprocess.Popen([sys.executable, "-m", "longrope.search", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def small_cfg(model="synthetic", short="[]", iterations=4, seed=0, sampler="longrope",
              backend="inprocess", count=1, num_gpus=0.0, space="", pruner=None):
    """`space`: extra lines for the [space] section (e.g. LongRoPE2's options); `pruner`: the
    search.pruner (None: the default)."""
    text = SMALL.format(model=model, short=short, iterations=iterations, seed=seed, sampler=sampler,
                        backend=backend, count=count, num_gpus=num_gpus, space=space,
                        pruner="" if pruner is None else f'pruner = "{pruner}"')
    import tomllib

    return config.from_dict(tomllib.loads(text)), text


def run_small(tmp_path, name="run", backend_obj=None, **kw):
    cfg, _ = small_cfg(**kw)
    run = Run.create(tmp_path / name, config.dumps(cfg))
    d = Driver(cfg, run, progress=False, backend=backend_obj)
    d.run_all()
    if d.backend is not None and backend_obj is None:
        d.backend.close()
    return run, d


def trajectory(run: Run) -> dict[str, list]:
    """Per stage, the evaluated candidates by slot: (slot, params, state, value)."""
    out = {}
    for study in run.studies():
        rows = []
        for t in study.get_trials(deepcopy=False):
            if t.system_attrs.get(REQUEUED):
                continue
            slot = tuple(t.system_attrs.get(SLOT) or (t.number,))
            value = None if t.value is None else round(t.value, 12)
            rows.append((slot, tuple(sorted(t.params.items())), t.state.name, value))
        out[study.study_name] = sorted(rows)
    return out


def ctrl_c_after(monkeypatch, n: int) -> None:
    """An in-process search interrupted as by Ctrl-C once `n` evaluations were waited for."""
    from longrope.search.backends import InProcessBackend

    wait, told = InProcessBackend.wait, []

    def interrupt(self):
        if len(told) == n:
            raise KeyboardInterrupt
        told.append(1)
        return wait(self)

    monkeypatch.setattr(InProcessBackend, "wait", interrupt)
