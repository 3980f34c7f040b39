"""Probe: seconds and peak memory of one patched document evaluation, in a fresh process.

``python -m longrope.search.cli.bench.probe_cost MODEL LENGTH`` prints
``SECONDS PEAK_BYTES DEVICE`` (tab-separated) for one random document of LENGTH
tokens: the allocator's peak on CUDA, the process's peak RSS on a CPU.
"""

from __future__ import annotations

import resource
import sys
import time


def main(spec: str, length: int) -> tuple[float, int, str]:
    import torch

    from longrope.objectives.devices import device_name, is_cuda, sync
    from longrope.objectives.headnll import warm_up
    from longrope.objectives.models import load_model
    from longrope.objectives.perplexity import document_nll
    from longrope.objectives.rotary import patch_model
    from longrope.spaces import architecture_of

    m = load_model(spec)
    patch_model(m.model, m.geometry)
    warm_up(m.model, architecture_of(m.model.config))  # a compiled head (nll auto on CUDA): as a worker does
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, m.model.config.vocab_size, (length,), generator=gen).numpy()  # cpu: numpy ids
    if is_cuda(m.device):  # one untimed forward first: the first pays CUDA's kernel loads and its
        document_nll(m.model, ids)  # allocator's growth (a CPU's first costs no more; skipped: 75 s at 16k)
        torch.cuda.reset_peak_memory_stats(m.device)
    sync(m.device)
    t = time.perf_counter()
    document_nll(m.model, ids)
    sync(m.device)
    secs = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated(m.device) if is_cuda(m.device) else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return secs, peak, device_name(m.device)


if __name__ == "__main__":
    print(*main(sys.argv[1], int(sys.argv[2])), sep="\t")
