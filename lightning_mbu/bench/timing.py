"""Timing of one model on one batch shape: warm-up, CUDA events, median, rotating inputs.

A model is timed through *runners*: one zero-argument callable per input buffer,
each running the model on its own input (rotating inputs, so no repeat finds its
input in L2). ``graph_runners`` turns a forward function into CUDA-graph replays,
one graph per input, all sharing one memory pool (they replay one after another on
one stream, so their intermediates may share memory).

Every timed iteration is bracketed by CUDA events and all are queued back to back,
so the GPU never idles between them; the energy meter spans the same iterations,
which are made numerous enough to last ``min_seconds`` for the power sensor.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .energy import EnergyMeter


@dataclass
class Measurement:
    batch: int
    times_ms: list[float]  # one per timed batch
    joules: float | None  # over all timed batches
    energy_method: str | None
    peak_memory_bytes: int

    @property
    def ms_per_batch(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def ms_per_image(self) -> float:
        return self.ms_per_batch / self.batch

    @property
    def images_per_s(self) -> float:
        return 1000.0 / self.ms_per_image

    @property
    def spread(self) -> float:
        """(max - min) / median of the batch times: how far to trust a difference."""
        return (max(self.times_ms) - min(self.times_ms)) / self.ms_per_batch

    @property
    def joules_per_image(self) -> float | None:
        if self.joules is None:
            return None
        return self.joules / (len(self.times_ms) * self.batch)


def random_inputs(n: int, batch: int, channels: int, size: tuple[int, int], *, dtype=torch.float32,
                  device="cuda", channels_last: bool = False, seed: int = 0) -> list[torch.Tensor]:
    """``n`` distinct normal-random image batches (never zeros: they can time faster than data)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return [
        torch.randn(batch, channels, *size, generator=gen, device=device, dtype=dtype).to(memory_format=fmt)
        for _ in range(n)
    ]


def eager_runners(fn: Callable[[torch.Tensor], object], inputs: Sequence[torch.Tensor]) -> list[Callable[[], None]]:
    return [lambda x=x: fn(x) for x in inputs]


def graph_runners(fn: Callable[[torch.Tensor], object], inputs: Sequence[torch.Tensor],
                  warmup: int = 2) -> list[Callable[[], None]]:
    """One CUDA graph per input, captured after ``warmup`` eager calls on a side stream."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):  # autotuning, lazy init and compilation stay outside the graph
            fn(inputs[0])
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    pool = torch.cuda.graph_pool_handle()
    graphs, outputs = [], []
    for x in inputs:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=pool):
            outputs.append(fn(x))  # kept alive, so the next capture cannot reuse its memory
        graphs.append(g)
    return [lambda g=g, _outputs=outputs: g.replay() for g in graphs]


def measure(runners: Sequence[Callable[[], None]], batch: int, *, warmup: int = 3, repeats: int = 20,
            min_seconds: float = 0.0, meter: EnergyMeter | None = None) -> Measurement:
    """Median batch time over at least ``repeats`` timed runs lasting at least ``min_seconds``."""
    if not runners:
        raise ValueError("measure needs at least one runner")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    n = len(runners)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for i in range(max(warmup, 1)):
        start.record()
        runners[i % n]()
        end.record()
    torch.cuda.synchronize()
    estimate_s = start.elapsed_time(end) / 1000.0
    iters = max(repeats, math.ceil(min_seconds / estimate_s) if estimate_s > 0 else repeats)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    if meter is not None:
        meter.start()
    for i, (s, e) in enumerate(events):
        s.record()
        runners[i % n]()
        e.record()
    torch.cuda.synchronize()
    joules = meter.stop() if meter is not None else None
    return Measurement(
        batch=batch,
        times_ms=[s.elapsed_time(e) for s, e in events],
        joules=joules,
        energy_method=meter.method if meter is not None and joules is not None else None,
        peak_memory_bytes=torch.cuda.max_memory_allocated(),
    )


def median_ms(fn: Callable[[], object], repeats: int = 10, warmup: int = 2) -> float:
    """Median CUDA-event time in ms of ``fn()`` alone (one kernel, one stage): ``measure`` of one runner."""
    return measure([fn], batch=1, warmup=warmup, repeats=repeats).ms_per_batch
