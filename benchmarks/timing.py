"""Wall-clock timing of whole calls and of their parts, and the peak memory a call adds.

Parts are timed inside one call by wrapping the methods that carry them (the vision tower, the
language model's prefix pass) on the model instance, so one `generate_actions` gives its total and
its breakdown. On a GPU every clock reading waits for the device first.

Peak memory is the most tensor memory a call holds at once beyond what was allocated before it: on
CUDA from the caching allocator's statistics; on CPU from the allocations and frees PyTorch's profiler
records during one more, untimed call. The process's allocator is left as a user's process has it: the
resident set, which this module once sampled, counts the heap memory glibc keeps after a free, and
making glibc hand every large block back at once made each block fault its pages in again at every use,
which slowed a base-size chunk on this project's CPU by about a fifth.
"""

import functools
import statistics
import time
from collections import defaultdict

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Seconds spent in named parts, collected from wrapped methods during the current call. A part's
    time excludes the wrapped parts called inside it (the vision tower inside a prefix pass, say)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.parts = defaultdict(float)
        self._nested = []  # seconds spent in wrapped calls inside each call still running

    def wrap(self, owner, method: str, part: str):
        """Times every call of `owner.method` (an instance attribute shadowing the class's method)."""
        original = getattr(owner, method)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            synchronize(self.device)
            start = time.perf_counter()
            self._nested.append(0.0)
            try:
                return original(*args, **kwargs)
            finally:
                synchronize(self.device)
                elapsed = time.perf_counter() - start
                inner = self._nested.pop()
                self.parts[part] += elapsed - inner
                if self._nested:
                    self._nested[-1] += elapsed

        setattr(owner, method, timed)

    def run(self, fn) -> dict[str, float]:
        """Runs `fn` once; returns {"total": seconds, **parts}."""
        self.parts.clear()
        synchronize(self.device)
        start = time.perf_counter()
        fn()
        synchronize(self.device)
        return {"total": time.perf_counter() - start, **self.parts}


def alternate(runs: dict[str, tuple[Clock, object]], repeats: int, warmup: int = 1, against: tuple[str, ...] = ()) -> dict:
    """Runs every entry of `runs` in turn, `warmup + repeats` rounds; the medians of the timed rounds, and under
    "rounds" each timed round's total, in order. For each name in `against`, each entry also gets "ratio to
    <name>": the median over rounds of its total over that entry's total in the same round, which cancels the
    drift of a shared machine's speed between rounds."""
    samples = {name: defaultdict(list) for name in runs}
    for round_ in range(warmup + repeats):
        for name, (clock, fn) in runs.items():
            timing = clock.run(fn)
            if round_ >= warmup:
                for part, seconds in timing.items():
                    samples[name][part].append(seconds)
    for other in against:
        for name in runs:
            samples[name][f"ratio to {other}"] = [a / b for a, b in zip(samples[name]["total"], samples[other]["total"])]
    return {name: {**{part: statistics.median(values) for part, values in parts.items()}, "rounds": parts["total"]}
            for name, parts in samples.items()}


def _peak_cpu_tensor_bytes(fn) -> int:
    """The largest running sum of PyTorch's CPU allocations (less frees) while `fn` runs."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        fn()
    # the profiler's raw records (its own exporters read them so): one per allocation (+) or free (-)
    records = [event for event in profiler.profiler.kineto_results.events() if event.name() == "[memory]"]
    held = peak = 0
    for event in sorted(records, key=lambda event: event.start_ns()):
        if event.device_type() in (DeviceType.CPU, DeviceType.MKLDNN):
            held += event.nbytes()
            peak = max(peak, held)
    return peak


def peak_added_bytes(fn, device: torch.device) -> int:
    """The most tensor memory `fn` holds at once beyond what was allocated before it."""
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    return _peak_cpu_tensor_bytes(fn)
