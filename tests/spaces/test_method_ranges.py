"""YaRN's correction range where it reaches past half the rotary dimension, against transformers."""


import numpy as np


def test_yarn_equals_hf_when_the_correction_range_reaches_past_half_the_dim():
    """Small base, 4k L0: correction_dim(beta_slow) > d/2 - 1; HF clamps high at d - 1."""
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from hf_configs import ARCHS, tiny_config
    from longrope.spaces import RopeGeometry, method

    arch = next(iter(ARCHS))
    cfg = tiny_config(arch, L0=4096, theta=500.0,
                      rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096})
    inv, _ = ROPE_INIT_FUNCTIONS["yarn"](cfg, torch.device("cpu"))
    g = RopeGeometry.from_config(cfg)
    mine = method("yarn", g, 4 * 4096).inv_freq(g)
    np.testing.assert_allclose(mine, inv.double().numpy(), rtol=1e-6)
