"""Probe: peak RSS growth while scoring one random document, in a fresh process.

``python -m longrope.search.cli.bench.probe_memory MODEL LENGTH chunked|labels``
prints the growth in bytes: ``chunked`` is this project's patched evaluation
(hidden states through the LM head in chunks), ``labels`` a plain transformers
forward with ``labels=`` (which builds the L × vocab logits). RSS is sampled
every 0.5 ms from a thread, after malloc_trim so the baseline is what is live.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def main(spec: str, length: int, path: str) -> int:
    import torch

    from longrope.objectives.models import load_model
    from longrope.objectives.perplexity import document_nll
    from longrope.objectives.rotary import patch_model

    m = load_model(spec)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, m.model.config.vocab_size, (1, length), generator=gen)
    with torch.no_grad():
        m.model.model(ids[:, :8])  # touch the code paths once
    if path == "chunked":
        patch_model(m.model, m.geometry)
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the baseline is what is live
    base, peak, done = rss(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.0005)

    t = threading.Thread(target=sample)
    t.start()
    if path == "chunked":
        document_nll(m.model, ids[0].numpy())
    else:
        with torch.no_grad():
            m.model(ids, labels=ids).loss.item()
    done.set()
    t.join()
    return max(peak[0], rss()) - base


if __name__ == "__main__":
    print(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
