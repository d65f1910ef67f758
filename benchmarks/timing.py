"""Wall-clock timing of whole calls and of their parts, and the peak memory a call adds.

Parts are timed inside one call by wrapping the methods that carry them (the vision tower, the
language model's prefix pass) on the model instance, so one `generate_actions` gives its total and
its breakdown. On a GPU every clock reading waits for the device first.

Peak memory is what a call adds on top of what was resident before it: on CUDA from the caching
allocator's statistics; on CPU from the process's resident set, sampled every millisecond. For the
latter, glibc is told to serve every large block from mmap so that a freed tensor leaves the
resident set at once (otherwise a second model's call would look cheaper than the first's).
"""

import ctypes
import functools
import os
import statistics
import threading
import time
from collections import defaultdict
from contextlib import contextmanager

import torch

M_MMAP_THRESHOLD = -3


def return_freed_memory_to_the_system():
    """Large allocations via mmap with a fixed threshold (glibc only; elsewhere a no-op)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 16)
    except OSError:
        pass


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
    """Runs every entry of `runs` in turn, `warmup + repeats` rounds; the medians of the timed rounds. For each
    name in `against`, each entry also gets "ratio to <name>": the median over rounds of its total over that
    entry's total in the same round, which cancels the drift of a shared machine's speed between rounds."""
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
    return {name: {part: statistics.median(values) for part, values in parts.items()} for name, parts in samples.items()}


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def _sampling_resident_set(interval: float = 0.001):
    peak = [_resident_bytes()]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _resident_bytes())
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()


def peak_added_bytes(fn, device: torch.device) -> int:
    """The most memory `fn` holds at once beyond what was in use before it."""
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    before = _resident_bytes()
    with _sampling_resident_set() as peak:
        fn()
    return max(peak[0] - before, 0)
