"""`daemon115 run`: the sources, the submitter and the timed jobs wired together, with signals and sd_notify.

Threads, not asyncio (design.md): the watch observers hand files to the ledger, one scheduler thread runs timed jobs,
one submitter thread drains the queue when woken. The ledger is the only shared state, so any part can stop and
start again and find its place from it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon115 import config as configmod
from daemon115.api.errors import AuthorizationNeeded
from daemon115.config import Config, secret_values
from daemon115.ledger import Ledger
from daemon115.logs import configure, get_logger
from daemon115.metrics import Metrics, serve
from daemon115.notify import EventTee, Notifications
from daemon115.scheduler import Scheduler
from daemon115.sdnotify import Notifier
from daemon115.status import STATUS_META
from daemon115.sources.watch import WatchSource
from daemon115.submitter import Submitter
from daemon115.wiring import connection_for, submitter_for

STOP_GRACE = 8.0  # systemd and interface.md want exit within 10 s of SIGTERM
AUTH_NAG_EVERY = 3600.0


def file_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


@dataclass
class SubmitState:
    """What `status` and sd_notify's STATUS line report about submission."""

    last_submit: float | None = None
    submitted: int = 0
    auth_needed: str | None = None
    paused: str | None = None
    last_error: str | None = None
    errors: list[str] = field(default_factory=list)


class SubmitLoop:
    """The submitter thread: drains when woken or when a batch window closes; survives lost authorization.

    When the refresh token is dead, sources keep filling the ledger while this loop waits for a new token file
    (``daemon115 auth import``), saying so once an hour, and resumes without a restart.
    """

    def __init__(self, make_submitter: Callable[[], Submitter], token_file: Path, log: Any, *,
                 on_submitted: Callable[[int], None] = lambda n: None) -> None:
        self._make = make_submitter
        self._on_submitted = on_submitted
        self._submitter = make_submitter()
        self._token_file = token_file
        self._log = log
        self._wake = threading.Event()
        self.state = SubmitState()
        self._dead_signature: tuple[int, int, int] | None = None
        self._last_nag = 0.0

    def wake(self) -> None:
        self._wake.set()

    def retell(self, log: Any) -> None:
        self._log = log

    def replace(self, make_submitter: Callable[[], Submitter]) -> None:
        self._make = make_submitter
        self._submitter = make_submitter()
        self.wake()

    def breaker(self) -> dict[str, object]:
        """The account-wide circuit breaker, for `status` (it lives in this process's transport)."""
        snap = self._submitter.cloud.transport.breaker.snapshot()  # type: ignore[attr-defined]
        return {"state": snap.state, "open_until": snap.open_until or None, "cool_off": snap.cool_off,
                "trips": snap.trips}

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            timeout = self._step()
            self._wake.wait(timeout)
            self._wake.clear()

    def _step(self) -> float:
        """One drain, or one look at the token file while authorization is lost; returns how long to wait."""
        if self.state.auth_needed is not None:
            if file_signature(self._token_file) == self._dead_signature:
                self._nag()
                return 5.0
            self._log.info("authorization_resumed", token_file=str(self._token_file))
            self.state.auth_needed = None
            self._submitter = self._make()
        try:
            report = self._submitter.drain(wait_window=True)
        except AuthorizationNeeded as exc:
            self.state.auth_needed = str(exc)
            self._dead_signature = file_signature(self._token_file)
            self._last_nag = 0.0
            self._nag()
            return 5.0
        except Exception as exc:  # noqa: BLE001 - the loop outlives any one failure; links stay in the ledger
            self.state.last_error = f"{type(exc).__name__}: {exc}"
            self._log.error("submit_failed", error=self.state.last_error)
            return 30.0
        self._account(report)
        wakeup = self._submitter.next_wakeup()
        if report.unreachable:
            return 30.0 if wakeup is None else max(5.0, min(wakeup, 30.0))
        return 60.0 if wakeup is None else max(0.05, min(wakeup, 60.0))

    def _account(self, report: Any) -> None:
        if report.submitted or report.duplicates:
            self.state.last_submit = time.time()
            self.state.submitted += report.submitted + report.duplicates
            self._on_submitted(report.submitted)
        self.state.paused = report.paused
        if report.unreachable:
            self.state.last_error = report.unreachable
            self._log.warning("submit_unreachable", error=report.unreachable)

    def _nag(self) -> None:
        """The first time is an ``authorization_needed`` event (notified); hourly reminders are only logged."""
        now = time.monotonic()
        if now - self._last_nag >= AUTH_NAG_EVERY or self._last_nag == 0.0:
            event = "authorization_needed" if self._last_nag == 0.0 else "authorization_still_needed"
            self._last_nag = now
            self._log.error(event, error=self.state.auth_needed,
                            action="run `daemon115 auth import --access-token ... --refresh-token ...`; "
                                   "queued links are kept and sent once a new token file appears")


class Daemon:
    """Owns the running parts for one config; SIGHUP swaps in a new config without losing queued work."""

    def __init__(self, config_path: Path | None, cfg: Config, *, notifier: Notifier | None = None) -> None:
        self.config_path = config_path
        self.cfg = cfg
        self.notifier = notifier or Notifier()
        self.redactor = configure(cfg.logging.level, cfg.logging.format)
        self.redactor.remember(*secret_values(cfg))
        self.log = get_logger("daemon115")
        self.notes = Notifications(cfg.notify, log=self.log, redactor=self.redactor)
        self.events = EventTee(self.log, self.notes)
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        self.ledger = Ledger(cfg.ledger.path)
        self.metrics = Metrics(links=self.ledger.counts, token_expires_at=self._token_expiry)
        self.status_server: Any = None
        self.scheduler = Scheduler(log=self.log, speedup=_speedup(os.environ))
        self.submit = SubmitLoop(self._submitter_factory(cfg), cfg.auth.token_file, self.events,
                                 on_submitted=self.metrics.submitted)
        self.watch = WatchSource(cfg.watch, self.ledger, on_queued=self.submit.wake, log=self.log)
        self.feeds = _feed_source(cfg, self.ledger, self.log, self.submit.wake)
        self._threads: list[threading.Thread] = []
        self.started = time.time()
        self._published: dict[str, object] = {}

    def _submitter_factory(self, cfg: Config) -> Callable[[], Submitter]:
        def make() -> Submitter:
            conn = connection_for(cfg, self.redactor, observer=self.metrics.api_call)
            return submitter_for(cfg, self.ledger, conn, log=self.events)

        return make

    # --- lifecycle -----------------------------------------------------------------------------------------------
    def run(self) -> int:
        self._install_signals()
        self.log.info("starting", config=str(self.config_path or "(defaults)"), watch=len(self.cfg.watch),
                      feeds=len(self.cfg.feeds), ledger=str(self.cfg.ledger.path))
        self._start_thread("submitter", self.submit.run)
        self._serve_status(self.cfg)
        self.watch.start()
        self._schedule(self.cfg)
        self._start_thread("scheduler", self.scheduler.run)
        self.notifier.ready(self.status_line())
        self.log.info("ready")
        try:
            self._main_loop()
        finally:
            self._shutdown()
        return 0

    def _main_loop(self) -> None:
        next_status = 0.0
        while not self.stop_event.is_set():
            if self.reload_event.is_set():
                self.reload_event.clear()
                self.reload()
            now = time.monotonic()
            if now >= next_status or self._status_changed():
                self._publish_status()
                next_status = now + 20.0
            if self.notifier.watchdog_interval:
                self.notifier.watchdog()
            self.stop_event.wait(1.0)

    def _shutdown(self) -> None:
        self.notifier.stopping()
        self.log.info("stopping")
        self.stop_event.set()
        self.submit.wake()
        self.scheduler.wake()
        deadline = time.monotonic() + STOP_GRACE
        self.watch.stop(timeout=2.0)
        if self.feeds is not None:
            self.feeds.close()
        if self.status_server is not None:
            self.status_server.stop()
        self.notes.close(timeout=1.0)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            # a batch still in flight stays `submitting`; the next start looks it up in the task list
            self.log.warning("stopped_with_work_in_flight", threads=alive)
        else:
            self._publish_status(stopped=True)
            self.ledger.close()
        self.log.info("stopped")

    def _start_thread(self, name: str, target: Callable[[threading.Event], None]) -> None:
        thread = threading.Thread(target=target, args=(self.stop_event,), name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _install_signals(self) -> None:
        def stop(signum: int, frame: object) -> None:
            self.stop_event.set()

        def reload(signum: int, frame: object) -> None:
            self.reload_event.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def _serve_status(self, cfg: Config) -> None:
        """/healthz and /metrics when status.listen is set; a port that cannot be bound is logged, not fatal."""
        if self.status_server is not None:
            self.status_server.stop()
            self.status_server = None
        if cfg.status.listen is None:
            return
        try:
            self.status_server = serve(self.metrics, cfg.status.host, cfg.status.port, health=self._health)
        except OSError as exc:
            self.log.error("status_listen_failed", error=str(exc))
            return
        self.log.info("status_listening", url=self.status_server.url)

    def _health(self) -> tuple[bool, str]:
        state = self.submit.state
        if state.auth_needed:
            return False, "authorization needed: run daemon115 auth import"
        return True, f"ok; {self.status_line()}"

    def _token_expiry(self) -> float | None:
        from daemon115.api.auth import token_state

        return token_state(self.cfg.auth.token_file).expires_at

    # --- config --------------------------------------------------------------------------------------------------
    def _schedule(self, cfg: Config) -> None:
        if self.feeds is not None:
            for feed in cfg.feeds:
                self.scheduler.every(f"feed:{feed.name}", feed.interval, self._poller(feed), first=0.0, jitter=0.1)
        self.scheduler.every("prune", 86400.0, lambda: self.ledger.prune(cfg.ledger.keep_details), first=60.0)
        self._schedule_cloud_jobs(cfg)

    def _schedule_cloud_jobs(self, cfg: Config) -> None:
        """Reconcile (paced by how fresh our links are) and each cleanup policy on its own `every`."""
        from daemon115.cleanup import next_run_in, run_policies
        from daemon115.reconciler import Reconciler

        for name in self.scheduler.names():
            if name.startswith("cleanup:") or name == "reconcile":
                self.scheduler.cancel(name)
        client = connection_for(cfg, self.redactor, observer=self.metrics.api_call).client
        reconciler = Reconciler(self.ledger, client, log=self.events)

        def reconcile() -> None:
            try:
                if self.submit.state.auth_needed is None:
                    reconciler.run()
            finally:
                self.scheduler.every("reconcile", reconciler.next_interval(cfg.reconcile), reconcile)

        self.scheduler.every("reconcile", reconciler.next_interval(cfg.reconcile), reconcile, first=5.0)
        for policy in cfg.cleanup:
            def clean(policy: Any = policy) -> None:
                if self.submit.state.auth_needed is not None:
                    return
                report = run_policies(cfg.cleanup, client, self.ledger, dry_run=False, only=policy.name,
                                      log=self.events)
                for result in report.results:
                    for outcome in result.outcomes:
                        if outcome.status == "done":
                            self.metrics.cleanup_action(policy.name, outcome.action.kind)

            self.scheduler.every(f"cleanup:{policy.name}", policy.every, clean,
                                 first=next_run_in(policy, self.ledger, time.time()))

    def _poller(self, feed: Any) -> Callable[[], None]:
        def poll() -> None:
            feeds = self.feeds
            if feeds is None:
                return
            result = feeds.poll(feed)
            self.metrics.feed_poll(feed.name, result.status != "error")
            if result.queued:
                self.submit.wake()

        return poll

    def reload(self) -> None:
        """SIGHUP: a valid new config takes effect live; an invalid one is refused and the old one keeps running."""
        self.notifier.reloading()
        try:
            new = configmod.load(self.config_path, must_exist=self.config_path is not None)
        except configmod.ConfigError as exc:
            self.log.error("reload_refused", problems=[str(p) for p in exc.problems])
            self.notifier.ready(self.status_line())
            return
        for name in self.scheduler.names():
            if name.startswith("feed:"):
                self.scheduler.cancel(name)
        self.watch.update(new.watch)
        if self.feeds is not None:
            self.feeds.close()
        self.feeds = _feed_source(new, self.ledger, self.log, self.submit.wake)
        self.redactor.remember(*secret_values(new))
        if new.notify != self.cfg.notify:
            self.notes.close(timeout=1.0)
            self.notes = Notifications(new.notify, log=self.log, redactor=self.redactor)
            self.events = EventTee(self.log, self.notes)
            self.submit.retell(self.events)
        self.submit.replace(self._submitter_factory(new))
        if new.status != self.cfg.status:
            self._serve_status(new)
        self._schedule(new)
        self.cfg = new
        self.log.info("reloaded", watch=len(new.watch), feeds=len(new.feeds))
        self.notifier.ready(self.status_line())

    # --- status --------------------------------------------------------------------------------------------------
    def status_line(self) -> str:
        counts = self.ledger.counts()
        state = self.submit.state
        parts = [f"{counts.get('queued', 0)} queued", f"{counts.get('submitted', 0)} submitted"]
        if state.last_submit:
            parts.append(f"last submit {time.strftime('%H:%M:%S', time.localtime(state.last_submit))}")
        if state.auth_needed:
            parts.append("AUTHORIZATION NEEDED: daemon115 auth import")
        elif state.paused:
            parts.append(f"paused: {state.paused}")
        return ", ".join(parts)

    def _status_doc(self) -> dict[str, object]:
        state = self.submit.state
        return {"pid": os.getpid(), "started": self.started, "last_submit": state.last_submit,
                "submitted_since_start": state.submitted, "auth_needed": state.auth_needed, "paused": state.paused,
                "last_error": state.last_error, "breaker": self.submit.breaker()}

    def _status_changed(self) -> bool:
        return self._status_doc() != self._published

    def _publish_status(self, *, stopped: bool = False) -> None:
        self._published = self._status_doc()
        doc = {**self._published, "updated": time.time(), "stopped": stopped}
        try:
            self.ledger.meta_set(STATUS_META, json.dumps(doc))
        except Exception as exc:  # noqa: BLE001 - status is best effort; the ledger may be busy
            self.log.warning("status_not_saved", error=str(exc))
        self.notifier.status(self.status_line())


def _feed_source(cfg: Config, ledger: Ledger, log: Any, wake: Callable[[], None]) -> Any:
    """The feed poller; None when no feed is configured."""
    if not cfg.feeds:
        return None
    from daemon115.sources.feeds import FeedPoller

    return FeedPoller(cfg.feeds, ledger, log=log)


def _speedup(env: Any) -> float:
    """DAEMON115_SPEEDUP: a test and benchmark knob that accelerates the schedules (not the batch window)."""
    try:
        return max(1.0, float(env.get("DAEMON115_SPEEDUP", "1")))
    except ValueError:
        return 1.0


def run(config_path: Path | None) -> int:
    cfg = configmod.load(config_path, must_exist=config_path is not None)
    return Daemon(config_path, cfg).run()
