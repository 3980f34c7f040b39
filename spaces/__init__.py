"""What can be searched: RoPE geometry, rescale-factor values, the search space
(bounds, grid, monotonicity, n̂ set, LongRoPE2's critical dimension and searched
mscale), the closed-form methods (PI, NTK, YaRN, dynamic NTK, Llama 3), and the
one table of admitted model architectures.
Pure numerics and data: imports nothing else of ours."""

from .architectures import (
    ALIBI_KEY,
    ARCHITECTURES,
    NO_ROPE,
    Architecture,
    architecture,
    architecture_of,
    is_alibi,
)
from .errors import UserError, need_file, read_text, reraise_interrupt
from .factors import (
    MSCALE_POLICIES,
    DeployedFactors,
    RescaleFactors,
    check_trained_length,
    check_usable,
    hf_attention_factor,
    load_factors,
    mscale_su,
    mscale_yarn,
    refuse_csv,
    resolve_mscale,
)
from .geometry import RopeGeometry, own_scaling
from .methods import METHODS, REFERENCE_METHODS, method
from .space import N_HAT_PAPER, SearchSpace, below_critical

__all__ = [
    "ALIBI_KEY",
    "ARCHITECTURES",
    "MSCALE_POLICIES",
    "NO_ROPE",
    "N_HAT_PAPER",
    "METHODS",
    "REFERENCE_METHODS",
    "Architecture",
    "DeployedFactors",
    "RescaleFactors",
    "RopeGeometry",
    "SearchSpace",
    "UserError",
    "architecture",
    "architecture_of",
    "below_critical",
    "check_trained_length",
    "check_usable",
    "is_alibi",
    "hf_attention_factor",
    "load_factors",
    "mscale_su",
    "mscale_yarn",
    "need_file",
    "own_scaling",
    "read_text",
    "reraise_interrupt",
    "refuse_csv",
    "resolve_mscale",
    "method",
]
