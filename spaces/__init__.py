"""What can be searched: RoPE geometry, rescale-factor values, the search space
(bounds, grid, monotonicity, n̂ set) and the closed-form methods (PI, NTK,
YaRN, dynamic NTK, Llama 3). Pure numerics: imports nothing else of ours."""

from .errors import UserError, read_text
from .factors import MSCALE_POLICIES, RescaleFactors, mscale_su, mscale_yarn, resolve_mscale
from .geometry import RopeGeometry
from .methods import METHODS, REFERENCE_METHODS, method
from .space import N_HAT_PAPER, SearchSpace

__all__ = [
    "MSCALE_POLICIES",
    "N_HAT_PAPER",
    "METHODS",
    "REFERENCE_METHODS",
    "RescaleFactors",
    "RopeGeometry",
    "SearchSpace",
    "UserError",
    "mscale_su",
    "mscale_yarn",
    "read_text",
    "resolve_mscale",
    "method",
]
