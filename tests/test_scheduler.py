"""The scheduler: jobs run on time, one at a time, survive failures, and can be replaced, run now or cancelled."""

from __future__ import annotations

import threading
import time

from daemon115.scheduler import Scheduler


def running(scheduler: Scheduler):
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_a_job_repeats_at_its_interval_and_a_failing_job_keeps_its_schedule():
    scheduler = Scheduler()
    runs: list[str] = []

    def boom() -> None:
        runs.append("boom")
        raise RuntimeError("a feed was down")

    scheduler.every("tick", 0.05, lambda: runs.append("tick"), first=0)
    scheduler.every("boom", 0.05, boom, first=0)
    stop, thread = running(scheduler)
    assert wait_until(lambda: runs.count("tick") >= 3 and runs.count("boom") >= 3)
    stop.set()
    thread.join(2)
    assert not thread.is_alive()


def test_cancel_run_now_and_rescheduling_leave_one_live_schedule_per_job():
    scheduler = Scheduler()
    runs: list[str] = []
    scheduler.every("job", 3600, lambda: runs.append("old"))
    scheduler.every("job", 3600, lambda: runs.append("new"))  # replaces, does not add
    stop, thread = running(scheduler)
    scheduler.run_now("job")
    assert wait_until(lambda: runs == ["new"])
    scheduler.every("gone", 0.01, lambda: runs.append("gone"), first=0.2)
    scheduler.cancel("gone")
    time.sleep(0.4)
    stop.set()
    thread.join(2)
    assert runs == ["new"] and scheduler.names() == ["job"]


def test_speedup_runs_long_intervals_fast():
    scheduler = Scheduler(speedup=3600)
    runs: list[float] = []
    scheduler.every("hourly", 3600, lambda: runs.append(time.monotonic()), first=0)
    stop, thread = running(scheduler)
    assert wait_until(lambda: len(runs) >= 3)
    stop.set()
    thread.join(2)
