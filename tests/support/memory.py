"""Sampling the resident memory of a process tree while a test runs (sampled, not timed)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psutil


class RssSampler:
    """The largest RSS seen per process (this one and every descendant), every `step_s`."""

    def __init__(self, step_s: float = 0.05) -> None:
        self.step_s = step_s
        self.peaks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        root = psutil.Process()
        for proc in [root, *root.children(recursive=True)]:
            try:
                rss = proc.memory_info().rss
                name = " ".join(proc.cmdline()[:3]) or proc.name()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if rss > self.peaks.get(proc.pid, ("", 0))[1]:
                self.peaks[proc.pid] = (name, rss)

    def _run(self) -> None:
        while not self._stop.wait(self.step_s):
            self._sample()

    @property
    def largest(self) -> tuple[str, int]:
        return max(self.peaks.values(), key=lambda p: p[1], default=("", 0))


@contextmanager
def sampled_rss(step_s: float = 0.05) -> Iterator[RssSampler]:
    sampler = RssSampler(step_s)
    sampler._sample()
    sampler._thread.start()
    try:
        yield sampler
    finally:
        sampler._stop.set()
        sampler._thread.join(timeout=5)
