"""Probe: seconds and peak RSS of one patched document evaluation, in a fresh process.

``python -m longrope.search.cli.bench.probe_cost MODEL LENGTH`` prints
``SECONDS PEAK_RSS_BYTES`` for one random document of LENGTH tokens.
"""

from __future__ import annotations

import resource
import sys
import time


def main(spec: str, length: int) -> tuple[float, int]:
    import torch

    from longrope.objectives.models import load_model
    from longrope.objectives.perplexity import document_nll
    from longrope.objectives.rotary import patch_model

    m = load_model(spec)
    patch_model(m.model, m.geometry)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, m.model.config.vocab_size, (length,), generator=gen).numpy()
    t = time.perf_counter()
    document_nll(m.model, ids)
    return time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


if __name__ == "__main__":
    print(*main(sys.argv[1], int(sys.argv[2])))
