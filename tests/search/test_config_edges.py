"""Config validation at its edges: n̂ at the first target, parents over the population, negative
short lengths, an sqlite URI filename."""


import pytest

from longrope.search import config
from longrope.spaces import UserError


def _from_dict(d):
    from longrope.search.config import from_dict

    return from_dict(d)


def test_an_n_hat_equal_to_the_first_target_is_refused():
    with pytest.raises(UserError, match="none is below the target 1024"):
        _from_dict({"space": {"targets": [1024], "n_hat": [1024]}})


def test_parents_one_more_than_the_population_is_refused():
    with pytest.raises(UserError, match="search.parents = 5 exceeds search.population = 4"):
        _from_dict({"search": {"population": 4, "parents": 5}})


def test_a_negative_short_length_is_refused():
    with pytest.raises(UserError, match="must be positive lengths"):
        _from_dict({"space": {"targets": [1024], "short": [-512]}})


def test_a_sqlite_uri_filename_is_left_as_it_is(tmp_path):
    from longrope.search.config import _anchor_sqlite

    url = "sqlite:///file:runs.db?mode=rwc&uri=true"
    assert _anchor_sqlite(url, tmp_path) == url


def test_a_spec_handed_out_does_not_change_with_the_config_it_came_from():
    """Workers keep the spec they were started with: a later edit of the run's config (a
    fine-tune switching model.path, say) must not reach them behind the driver's back."""
    from longrope.objectives.specs import ObjectiveSpec

    cfg = config.RunConfig()
    spec = ObjectiveSpec.from_config(cfg)
    cfg.model.path, cfg.data.path, cfg.objective.kind = "other", "other-data", "needle"
    assert (spec.model.path, spec.data.path, spec.task.kind) == (config.RunConfig().model.path,
                                                                 config.RunConfig().data.path, "ppl")


def test_the_bounds_themselves_are_allowed():
    """parents = population (every candidate a parent) and λmax = 1 (long or short: no stretch
    above 1) are the edges of what is allowed, not past them."""
    cfg = _from_dict({"search": {"population": 4, "parents": 4}, "space": {"lambda_max": 1.0,
                                                                           "short_lambda_max": 1.0}})
    assert (cfg.search.parents, cfg.space.lambda_max, cfg.space.short_lambda_max) == (4, 1.0, 1.0)


def test_a_config_from_a_pipe_is_read(tmp_path):
    """`longrope search <(make-config) ...`: a FIFO is no regular file, and was refused as missing."""
    import os
    import threading

    fifo = tmp_path / "c.toml"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("[search]\npopulation = 8\nparents = 4\n"), daemon=True)
    writer.start()
    try:
        assert config.load(fifo).search.population == 8
    finally:
        writer.join(timeout=10)
