"""`daemon115 status`: what the ledger and the running daemon say about the queue, feeds, token and quota.

Everything comes from the ledger file (the daemon publishes its own state there every few seconds), so it works
whether or not the daemon is running; only the quota is asked of 115, and a failure to ask is shown, not fatal.
"""

from __future__ import annotations

import json
import time
from typing import Any

from daemon115.api.auth import token_state
from daemon115.config import Config
from daemon115.ledger import Ledger

STATUS_META = "daemon.status"
STALE_AFTER = 60.0  # a status older than this means the daemon is not running


def collect(cfg: Config, ledger: Ledger, quota: Any = None, quota_error: str | None = None) -> dict[str, Any]:
    daemon = _json(ledger.meta_get(STATUS_META))
    running = bool(daemon) and not daemon.get("stopped") and time.time() - float(daemon.get("updated", 0)) < STALE_AFTER
    token = token_state(cfg.auth.token_file)
    return {
        "queue": ledger.counts(),
        "daemon": {**daemon, "running": running} if daemon else {"running": False},
        "feeds": [feed_health(ledger, feed.name) for feed in cfg.feeds],
        "token": {"file": str(token.path), "present": token.present, "expires_at": token.expires_at,
                  "problem": token.problem or (daemon.get("auth_needed") if running else None)},
        "quota": quota.to_json() if quota is not None else None,
        "quota_error": quota_error,
        "breaker": daemon.get("breaker") if running else None,
        "last_errors": [e for e in (daemon.get("last_error"),) if e] if daemon else [],
    }


def feed_health(ledger: Ledger, name: str) -> dict[str, Any]:
    state = _json(ledger.meta_get(f"feed:{name}"))
    return {"name": name, "last_poll": state.get("last_poll"), "last_ok": state.get("last_ok"),
            "failures": state.get("failures", 0), "backoff_until": state.get("backoff_until"),
            "last_error": state.get("last_error"), "healthy": not state.get("failures")}


def _json(text: str | None) -> dict[str, Any]:
    try:
        doc = json.loads(text) if text else {}
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def render(doc: dict[str, Any]) -> str:
    from daemon115.display import human_duration, human_time

    q = doc["queue"]
    lines = ["queue     " + ", ".join(f"{q.get(s, 0)} {s}" for s in ("queued", "submitting", "submitted", "failed"))]
    d = doc["daemon"]
    if d.get("running"):
        lines.append(f"daemon    running (pid {d.get('pid')}), last submit {human_time(d.get('last_submit'))}"
                     + (f", PAUSED: {d['paused']}" if d.get("paused") else ""))
    else:
        lines.append("daemon    not running")
    t = doc["token"]
    if t["problem"]:
        lines.append(f"token     PROBLEM: {t['problem']} (run `daemon115 auth import ...`)")
    elif t["expires_at"]:
        left = t["expires_at"] - time.time()
        lines.append(f"token     access token expires {human_time(t['expires_at'])} ({human_duration(left)})")
    if doc["quota"]:
        lines.append(f"quota     {doc['quota']['surplus']} left of {doc['quota']['count']}")
    elif doc["quota_error"]:
        lines.append(f"quota     unknown: {doc['quota_error']}")
    if doc["breaker"] and doc["breaker"]["state"] != "closed":
        lines.append(f"115 calls {doc['breaker']['state']} after rate limiting "
                     f"(until {human_time(doc['breaker']['open_until'])})")
    for feed in doc["feeds"]:
        health = "ok" if feed["healthy"] else f"FAILING x{feed['failures']}: {feed['last_error']}"
        lines.append(f"feed      {feed['name']}: last poll {human_time(feed['last_poll'])}, {health}")
    for error in doc["last_errors"]:
        lines.append(f"error     {error}")
    return "\n".join(lines)
