"""One thread for every timed job (feed polls, rescans, reconcile, cleanup, status), so jobs never overlap.

A job that raises is logged and rescheduled; it never stops the thread or the other jobs.
"""

from __future__ import annotations

import heapq
import itertools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(order=True)
class _Slot:
    due: float
    seq: int
    name: str = field(compare=False)


@dataclass(frozen=True)
class Job:
    name: str
    interval: float
    fn: Callable[[], object]
    jitter: float = 0.0  # a fraction of the interval: feeds with one interval do not all fire together


class Scheduler:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic, log: Any = None, speedup: float = 1.0) -> None:
        """``speedup`` > 1 runs every schedule that many times faster: soak tests and benchmarks live a day of
        feed polls and cleanups in minutes (``DAEMON115_SPEEDUP``); it is 1 in normal use."""
        self._clock = clock
        self._speedup = max(speedup, 1e-9)
        self._log = log
        self._jobs: dict[str, Job] = {}
        self._current: dict[str, int] = {}  # each job's one live slot; older heap entries are stale
        self._heap: list[_Slot] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()

    def every(self, name: str, interval: float, fn: Callable[[], object], *, first: float | None = None,
              jitter: float = 0.0) -> None:
        """(Re)schedule ``name``; ``first`` is the delay before its first run (default: one interval)."""
        with self._cond:
            self._jobs[name] = Job(name, max(interval, 0.001), fn, jitter)
            self._push(name, self._spread(self._jobs[name]) if first is None else first)

    def cancel(self, name: str) -> None:
        with self._cond:
            self._jobs.pop(name, None)
            self._current.pop(name, None)

    def names(self) -> list[str]:
        with self._cond:
            return sorted(self._jobs)

    def run_now(self, name: str) -> None:
        with self._cond:
            if name in self._jobs:
                self._push(name, 0.0)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            job = self._next(stop)
            if job is None:
                continue
            try:
                job.fn()
            except Exception as exc:  # noqa: BLE001 - one failing job must not take the scheduler down
                if self._log is not None:
                    self._log.error("job_failed", job=job.name, error=f"{type(exc).__name__}: {exc}")

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _push(self, name: str, delay: float) -> None:
        slot = _Slot(self._clock() + delay / self._speedup, next(self._seq), name)
        self._current[name] = slot.seq
        heapq.heappush(self._heap, slot)
        self._cond.notify()

    def _next(self, stop: threading.Event) -> Job | None:
        with self._cond:
            while not stop.is_set():
                while self._heap and self._current.get(self._heap[0].name) != self._heap[0].seq:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait(1.0)
                    continue
                wait = self._heap[0].due - self._clock()
                if wait > 0:
                    self._cond.wait(min(wait, 1.0))
                    continue
                job = self._jobs[heapq.heappop(self._heap).name]
                self._push(job.name, self._spread(job))
                return job
        return None

    @staticmethod
    def _spread(job: Job) -> float:
        if not job.jitter:
            return job.interval
        return job.interval * (1 + random.uniform(-job.jitter, job.jitter))
