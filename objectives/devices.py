"""Where a model runs, measured the same way on every device.

Peak memory is the allocator's own peak on CUDA (``torch.cuda.max_memory_allocated``) and
the resident set on a CPU (the kernel's high-water mark, reset on entry; no allocator counter
covers every CPU allocation); timings synchronise CUDA first, since its kernels return before they finish.
The bench and ``longrope check`` report through these, naming the device each figure is of.
"""

from __future__ import annotations

import ctypes
import os
import statistics
import threading
import time
from typing import Any


def is_cuda(device: Any) -> bool:
    return str(device).startswith("cuda")


def device_name(device: Any) -> str:
    """'NVIDIA H100 80GB HBM3' or 'CPU, 2 cores': what a figure was measured on."""
    import torch

    if is_cuda(device):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU, {os.cpu_count()} cores"


def sync(device: Any) -> None:
    import torch

    if is_cuda(device):
        torch.cuda.synchronize(torch.device(device))


def out_of_memory(error: BaseException | None) -> bool:
    """Whether an error says the GPU's memory ran out: torch's allocator ("CUDA out of memory") or
    CUDA's own, outside it, on a card its replicas fill (a kernel's launch, cuBLAS's handle or
    workspace: "CUDA error: out of memory", CUBLAS_STATUS_ALLOC_FAILED), not a failed device."""
    if not isinstance(error, RuntimeError):  # torch's OutOfMemoryError is one too; torch not imported
        return False
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError) or any(
        m in str(error) for m in ("out of memory", "ALLOC_FAILED"))


def release_memory() -> None:
    """Free what dropped tensors held: their reference cycles (gc), then the CUDA cache, so the
    next allocation (a smaller batch, another model) finds it."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def median_seconds(fn, reps: int, device: Any = "cpu") -> float:
    """Median wall time of `fn()` over `reps` calls, each ended by a device synchronisation."""
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_rate(device: Any, dtype: Any, n: int | None = None) -> float:
    """FLOP/s of an n × n matmul in `dtype` on `device`: the rate a forward is compared with
    (8192 on a GPU, where 2048 would not fill the card; 2048 on a CPU)."""
    import torch

    n = n or (8192 if is_cuda(device) else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    a @ a  # warm up (cuBLAS picks its kernel on the first call)
    return 2 * n**3 / median_seconds(lambda: a @ a, 5, device)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")  # 64 KiB on some aarch64 kernels


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.bytes``: peak growth during the block.

    CUDA: the allocator's peak minus what was allocated on entry. CPU: the kernel's resident-set
    high-water mark (VmHWM, reset on entry by writing 5 to /proc/self/clear_refs) minus the RSS
    on entry, after malloc_trim so the baseline is what is live. Where the mark cannot be reset
    (not Linux, or an old kernel) a thread samples the RSS instead; that can miss a peak held
    only inside one C call, since the sampler needs the GIL to look."""

    def __init__(self, device: Any):
        self.device, self.bytes = device, 0

    def __enter__(self) -> PeakMemory:
        if is_cuda(self.device):
            import torch

            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:  # not glibc: the baseline includes freed heap, the peak is still a peak
            pass
        self._base, self._peak, self._done, self._thread = _rss(), 0, threading.Event(), None
        if not _reset_high_water_mark():
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.is_set():
            self._peak = max(self._peak, _rss())
            time.sleep(0.0005)

    def __exit__(self, *exc: Any) -> None:
        if is_cuda(self.device):
            import torch

            sync(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._base
            return
        if self._thread is None:
            self._peak = _high_water_mark()
        else:
            self._done.set()
            self._thread.join()
        self.bytes = max(self._peak, _rss()) - self._base


def _reset_high_water_mark() -> bool:
    """Set VmHWM to the current RSS (Linux >= 4.0, proc(5) clear_refs); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _high_water_mark() > 0
    except (OSError, ValueError):
        return False


def _high_water_mark() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    raise ValueError("no VmHWM in /proc/self/status")
