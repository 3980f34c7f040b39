"""How figures are measured (objectives/devices.py): the bench and `check` report through these."""

import time

import pytest
import torch

from longrope.objectives import devices


def test_peak_memory_on_the_cpu_is_the_growth_in_the_block_not_the_process_total():
    """A 200 MB buffer touched inside the block: the figure is about 200 MB, not the whole
    process's resident set (torch alone holds a few hundred MB)."""
    torch.ones(1)
    assert devices._rss() > 150 * 2**20  # the total the figure must not be
    with devices.PeakMemory("cpu") as m:
        buf = bytearray(200 * 2**20)
        buf[::4096] = b"\x01" * len(buf[::4096])  # every page resident
        time.sleep(0.05)  # live long enough for the sampler too, where the mark cannot be reset
        del buf
    assert 150 * 2**20 < m.bytes < 300 * 2**20, m.bytes
    with devices.PeakMemory("cpu") as quiet:
        pass
    assert quiet.bytes < 50 * 2**20


def test_the_peak_held_inside_one_c_call_is_counted():
    """Allocated, touched and freed within one call that holds the GIL (no thread can sample
    it): the kernel's high-water mark still sees it. CI missed it with a sampler (0.1 MB)."""
    if not devices._reset_high_water_mark():
        pytest.skip("this kernel's high-water mark cannot be reset (/proc/self/clear_refs)")
    with devices.PeakMemory("cpu") as m:
        len(b"\x01" * (200 * 2**20))  # made, filled and freed by C code holding the GIL
    assert 150 * 2**20 < m.bytes < 300 * 2**20, m.bytes


def test_where_the_mark_cannot_be_reset_a_thread_samples_the_resident_set(monkeypatch):
    monkeypatch.setattr(devices, "_reset_high_water_mark", lambda: False)
    with devices.PeakMemory("cpu") as m:
        buf = bytearray(200 * 2**20)
        buf[::4096] = b"\x01" * len(buf[::4096])
        time.sleep(0.05)  # the sampler runs while the buffer is live
        del buf
    assert 150 * 2**20 < m.bytes < 300 * 2**20, m.bytes


def test_matmul_rate_counts_two_flops_a_multiply_add(monkeypatch):
    """An n × n product is n³ multiply-adds, 2n³ FLOP: the rate every efficiency is measured by."""
    monkeypatch.setattr(devices, "median_seconds", lambda fn, reps, device="cpu": 0.5)
    assert devices.matmul_rate("cpu", torch.float32, n=64) == pytest.approx(2 * 64**3 / 0.5)
