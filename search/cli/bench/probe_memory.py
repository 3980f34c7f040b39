"""Probe: peak memory growth while scoring one random document, in a fresh process.

``python -m longrope.search.cli.bench.probe_memory MODEL LENGTH chunked|labels``
prints the growth in bytes and the device: ``chunked`` is this project's patched
evaluation (hidden states through the LM head in chunks), ``labels`` a plain
transformers forward with ``labels=`` (which builds the L × vocab logits). On CUDA
the allocator's peak, on a CPU the resident set (objectives/devices.PeakMemory).
"""

from __future__ import annotations

import sys


def main(spec: str, length: int, path: str) -> tuple[int, str]:
    import torch

    from longrope.objectives.devices import PeakMemory, device_name
    from longrope.objectives.headnll import warm_up
    from longrope.objectives.models import load_model
    from longrope.objectives.perplexity import document_nll
    from longrope.objectives.rotary import patch_model
    from longrope.spaces import architecture_of

    m = load_model(spec)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, m.model.config.vocab_size, (1, length), generator=gen).to(m.device)
    with torch.no_grad():
        m.model.model(ids[:, :8])  # touch the code paths once
    if path == "chunked":
        patch_model(m.model, m.geometry)
        # the compiled head (nll auto on CUDA) compiles here, as a worker's does as it loads: inside,
        # Triton's autotuning buffers counted in the peak (on a CPU the head is eager: nothing to do)
        warm_up(m.model, architecture_of(m.model.config))
    with PeakMemory(m.device) as peak:
        if path == "chunked":
            document_nll(m.model, ids[0].cpu().numpy())
        else:
            with torch.no_grad():
                m.model(ids, labels=ids).loss.item()
    return peak.bytes, device_name(m.device)


if __name__ == "__main__":
    print(*main(sys.argv[1], int(sys.argv[2]), sys.argv[3]), sep="\t")
