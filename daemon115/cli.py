"""The command line: argument parsing, one function per command, and the exit codes of interface.md.

Imports of the heavier modules happen inside the commands, so ``once`` from cron and ``--help`` start fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from daemon115.api.client import Connection
    from daemon115.config import Config
    from daemon115.ledger import Ledger
    from daemon115.submitter import Submitter

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_AUTH = 0, 1, 2, 3


class Context:
    """What every command gets: parsed arguments, the config (loaded on first use) and the output streams."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args = args
        self.out = out
        self.err = err
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            from daemon115 import config

            path = Path(self.args.config) if self.args.config else None
            self._config = config.load(path, must_exist=path is not None)
        return self._config

    def connect(self, *, quick: bool = False) -> Connection:
        from daemon115.wiring import connection_for

        return connection_for(self.config, quick=quick)

    def ledger(self) -> Ledger:
        from daemon115.ledger import Ledger

        return Ledger(self.config.ledger.path)

    def submitter(self, ledger: Ledger) -> Submitter:
        from daemon115.wiring import submitter_for

        return submitter_for(self.config, ledger, self.connect())

    def print(self, *parts: object) -> None:
        print(*parts, file=self.out)

    def print_json(self, doc: Any) -> None:
        json.dump(doc, self.out, ensure_ascii=False, indent=2)
        self.out.write("\n")


# --- commands --------------------------------------------------------------------------------------------------------

def cmd_check(ctx: Context) -> int:
    from daemon115 import config

    path = Path(ctx.args.config) if ctx.args.config else None
    cfg = ctx._config = config.load(path, must_exist=True)
    for warning in config.warnings(cfg):
        ctx.print(f"warning: {warning}")
    code = EXIT_OK
    if ctx.args.online:
        code = _check_online(ctx, cfg)
    ctx.print("config OK" if code == EXIT_OK else "config OK, but some targets have problems")
    return code


def _check_online(ctx: Context, cfg: Config) -> int:
    """The token against 115, then every target: its folder id, or what is wrong with it."""
    from daemon115.api.folders import FolderResolver

    conn = ctx.connect()
    info = conn.client.user_info()
    ctx.print(f"token: valid for account {info.user_name} ({info.user_id})")
    with ctx.ledger() as ledger:
        checks = FolderResolver(conn.client, ledger, create=cfg.submit.create_folders).check_all(all_targets(cfg))
    failed = False
    for check in checks:
        if check.problem:
            failed = True
            ctx.print(f"target {check.target}: PROBLEM: {check.problem}")
        elif check.file_id is None:
            ctx.print(f"target {check.target}: missing; created on first use (submit.create_folders)")
        else:
            ctx.print(f"target {check.target} -> folder id {check.file_id}")
    return EXIT_USAGE if failed else EXIT_OK


def all_targets(cfg: Config) -> list[str]:
    """Every target the config names, once each, in the order they appear."""
    found = [cfg.submit.default_target]
    for folder in cfg.watch:
        found += [folder.target, *folder.subfolders.values()]
    for feed in cfg.feeds:
        found += [feed.target, *(r.target for r in feed.rules if r.target)]
    return list(dict.fromkeys(found))


def cmd_whoami(ctx: Context) -> int:
    from daemon115.display import human_size, human_time

    info = ctx.connect().client.user_info()
    if ctx.args.json:
        ctx.print_json(info.to_json())
        return EXIT_OK
    ctx.print(f"account   {info.user_name} (id {info.user_id})")
    ctx.print(f"VIP       {info.vip_level_name or '-'}, expires {human_time(info.vip_expire)}")
    ctx.print(f"space     {human_size(info.space_used)} used of {human_size(info.space_total)}, "
              f"{human_size(info.space_remain)} free")
    return EXIT_OK


def cmd_quota(ctx: Context) -> int:
    from daemon115.display import table

    quota = ctx.connect().client.quota()
    if ctx.args.json:
        ctx.print_json(quota.to_json())
        return EXIT_OK
    ctx.print(f"cloud-download quota: {quota.surplus} left of {quota.count} ({quota.used} used)")
    if quota.packages:
        ctx.print(table(["package", "count", "used", "left"],
                        [[p.name, p.count, p.used, p.surplus] for p in quota.packages]))
    return EXIT_OK


def cmd_tasks(ctx: Context) -> int:
    """The cloud list, each task beside the source that brought it when the daemon submitted it."""
    from daemon115.display import human_size, human_time, table
    from daemon115.reconciler import ours_index, read_task_list

    listing = read_task_list(ctx.connect().client)
    tasks = listing.tasks
    with ctx.ledger() as ledger:
        ours = ours_index(ledger, tasks)
    if ctx.args.json:
        ctx.print_json([{**t.to_json(), "source": ours.get(t.info_hash)} for t in tasks])
    elif not tasks:
        ctx.print("no cloud-download tasks")
    else:
        rows = [[t.status_name, "-" if t.percent is None else f"{t.percent:.0f}%", human_size(t.size),
                 human_time(t.add_time), ours.get(t.info_hash, "-"), t.info_hash, t.name] for t in tasks]
        ctx.print(table(["status", "done", "size", "added", "submitted by", "info_hash", "name"], rows))
        ctx.print(f"{len(tasks)} tasks, {sum(1 for t in tasks if t.info_hash in ours)} submitted by daemon115")
    if listing.problem:
        ctx.err.write(f"warning: the list is incomplete: {listing.problem}\n")
    return EXIT_OK


def cmd_cleanup(ctx: Context) -> int:
    from daemon115.cleanup import UnknownPolicy, format_report, run_policies

    cfg = ctx.config
    if not cfg.cleanup:
        ctx.print("no cleanup policies in the config")
        return EXIT_OK
    with ctx.ledger() as ledger:
        try:
            report = run_policies(cfg.cleanup, ctx.connect().client, ledger, dry_run=ctx.args.dry_run,
                                  only=ctx.args.policy)
        except UnknownPolicy as exc:
            ctx.err.write(f"error: {exc}\n")
            return EXIT_USAGE
    ctx.print(format_report(report))
    return EXIT_FAILED if report.failed else EXIT_OK


def cmd_auth_import(ctx: Context) -> int:
    from daemon115.api.auth import Tokens, import_tokens

    access = _secret_arg(ctx.args.access_token)
    refresh = _secret_arg(ctx.args.refresh_token)
    if not access or not refresh:
        ctx.err.write("error: --access-token and --refresh-token must not be empty\n")
        return EXIT_USAGE
    path = ctx.config.auth.token_file
    import_tokens(path, Tokens(access, refresh, time.time() + ctx.args.expires_in))
    ctx.print(f"token file written: {path} (mode 0600); the access token expires in "
              f"{ctx.args.expires_in // 60} min and is refreshed automatically")
    return EXIT_OK


def _secret_arg(value: str) -> str:
    """``-`` reads the value from standard input, which keeps it out of the process list and shell history."""
    return sys.stdin.readline().strip() if value == "-" else value.strip()


def cmd_auth_status(ctx: Context) -> int:
    from daemon115.api.auth import token_state
    from daemon115.display import human_duration, human_time

    state = token_state(ctx.config.auth.token_file)
    doc = {"token_file": str(state.path), "present": state.present, "expires_at": state.expires_at,
           "problem": state.problem}
    if ctx.args.json:
        ctx.print_json(doc)
    elif state.problem:
        ctx.print(f"token file {state.path}: {state.problem}")
    else:
        assert state.expires_at is not None
        left = state.expires_at - time.time()
        when = f"expires {human_time(state.expires_at)} (in {human_duration(left)})" if left > 0 else \
            f"expired {human_time(state.expires_at)}; it is refreshed on the next call"
        ctx.print(f"token file {state.path}: access token {when}")
    if state.problem:
        from daemon115.api.errors import AuthorizationNeeded

        raise AuthorizationNeeded(None, state.problem, "token file")
    return EXIT_OK


def cmd_auth_login(ctx: Context) -> int:
    from daemon115.login import QrExpired, login

    conn = ctx.connect()
    while True:
        try:
            login(conn.passport, ctx.args.client_id, ctx.config.auth.token_file, out=ctx.out, qr=not ctx.args.no_qr)
            return EXIT_OK
        except ValueError as exc:
            ctx.err.write(f"error: {exc}\n")
            return EXIT_USAGE
        except QrExpired as exc:
            ctx.err.write(f"the QR code is no longer valid ({exc.reason}).\n")
            if not sys.stdin.isatty() or input("Start again with a new QR code? [Y/n] ").strip().lower() == "n":
                return EXIT_AUTH


def cmd_auth_refresh(ctx: Context) -> int:
    from daemon115.display import human_time

    tokens = ctx.connect().client.tokens.refresh()
    ctx.print(f"refreshed; the new access token expires {human_time(tokens.expires_at)}")
    return EXIT_OK


def cmd_add(ctx: Context) -> int:
    from daemon115.intake import candidate
    from daemon115.links import LinkError, parse_link

    target = ctx.args.target or ctx.config.submit.default_target
    candidates, bad = [], 0
    for text in ctx.args.urls:
        try:
            candidates.append(candidate(parse_link(text), target=target, source="cli"))
        except LinkError as exc:
            ctx.err.write(f"error: {_shorten(text)}: {exc}\n")
            bad += 1
    with ctx.ledger() as ledger:
        for rec in ledger.record(candidates, force=ctx.args.force):
            word = {"queued": "queued", "duplicate": f"already known ({rec.status})",
                    "requeued": "queued again (--force)"}.get(rec.outcome, rec.outcome)
            ctx.print(f"{word}: {rec.key}")
        if candidates:
            code = _drain_and_report(ctx, ctx.submitter(ledger))
        else:
            code = EXIT_OK
    return EXIT_USAGE if bad else code


def _drain_and_report(ctx: Context, submitter: Submitter) -> int:
    report = submitter.drain(wait_window=False)
    ctx.print(f"sent {report.calls} batch(es): {report.submitted} submitted, {report.duplicates} already in the cloud, "
              f"{report.failed} failed, {report.requeued} queued for a retry")
    if report.paused:
        ctx.err.write(f"submission paused: {report.paused}; queued links stay queued\n")
    if report.unreachable:
        ctx.err.write(f"error: {report.unreachable}; queued links stay queued\n")
        return EXIT_FAILED
    return EXIT_OK


def _shorten(text: str, width: int = 80) -> str:
    text = text.strip()
    return text if len(text) <= width else text[: width - 1] + "…"


def cmd_run(ctx: Context) -> int:
    from daemon115 import daemon

    return daemon.run(Path(ctx.args.config) if ctx.args.config else None)


def cmd_once(ctx: Context) -> int:
    """Every source once, then everything queued at once; exit 1 if a feed or 115 could not be reached."""
    cfg = ctx.config
    code = EXIT_OK
    with ctx.ledger() as ledger:
        if cfg.watch:
            from daemon115.sources.watch import WatchSource

            outcomes = WatchSource(cfg.watch, ledger).scan()
            counts = {a: sum(1 for o in outcomes if o.action == a) for a in ("queued", "duplicate", "failed", "retry")}
            ctx.print("watch folders: " + ", ".join(f"{n} {a}" for a, n in counts.items()))
        if cfg.feeds:
            from daemon115.sources.feeds import FeedPoller

            poller = FeedPoller(cfg.feeds, ledger)
            try:
                results = poller.poll_all()  # every feed whatever its interval; a feed backing off stays paused
            finally:
                poller.close()
            for result in results:
                ctx.print(f"feed {result.feed}: {result.status}, {result.queued} queued, {result.duplicates} known"
                          + (f" ({result.error})" if result.error else ""))
                if result.status in ("error", "skipped-backoff"):
                    code = EXIT_FAILED
        return max(code, _drain_and_report(ctx, ctx.submitter(ledger)))


def cmd_ledger_list(ctx: Context) -> int:
    from daemon115.display import human_time, table

    with ctx.ledger() as ledger:
        entries = ledger.entries(ctx.args.status)
    if ctx.args.json:
        ctx.print_json([e.to_json() for e in entries])
        return EXIT_OK
    if not entries:
        ctx.print("the ledger is empty" if not ctx.args.status else f"no {ctx.args.status} links")
        return EXIT_OK
    rows = [[e.status, _task_cell(e), human_time(e.created_at), e.target, e.source, e.name or _shorten(e.url, 60)]
            for e in entries]
    ctx.print(table(["status", "cloud", "first seen", "target", "source", "name"], rows))
    return EXIT_OK


def _task_cell(entry: Any) -> str:
    from daemon115.api.models import TASK_STATUS_NAMES

    if entry.task_status is None:
        return "-"
    name = TASK_STATUS_NAMES.get(entry.task_status, str(entry.task_status))
    return name if entry.percent is None else f"{name} {entry.percent:.0f}%"


def _find(ledger: Ledger, text: str) -> Any:
    """A key, an info hash or a URL as the user typed it: a magnet in another encoding still finds its link."""
    from daemon115.links import LinkError, parse_link

    entry = ledger.find(text)
    if entry is None:
        try:
            entry = ledger.find(parse_link(text).key)
        except LinkError:
            return None
    return entry


def cmd_ledger_show(ctx: Context) -> int:
    from daemon115.display import human_time

    with ctx.ledger() as ledger:
        entry = _find(ledger, ctx.args.key)
        if entry is None:
            ctx.err.write(f"error: nothing in the ledger matches {ctx.args.key!r}\n")
            return EXIT_USAGE
        history = ledger.history(entry.key)
    ctx.print(f"key       {entry.key}")
    ctx.print(f"url       {entry.url}")
    ctx.print(f"name      {entry.name or '-'}")
    ctx.print(f"status    {entry.status}" + (f" ({entry.reason})" if entry.reason else ""))
    ctx.print(f"target    {entry.target}")
    ctx.print(f"source    {entry.source}" + (f", rule {entry.rule}" if entry.rule else ""))
    ctx.print(f"attempts  {entry.attempts}")
    if entry.task_status is not None:
        ctx.print(f"cloud     {_task_cell(entry)}")
    ctx.print("history:")
    for event in history:
        detail = ", ".join(f"{k}={v}" for k, v in event.detail.items() if v not in (None, ""))
        ctx.print(f"  {human_time(event.at)}  {event.kind:<10} {detail}")
    return EXIT_OK


def cmd_ledger_retry(ctx: Context) -> int:
    return _change_entry(ctx, lambda ledger, key: ledger.retry(key), "queued again: {key}",
                         "no failed link matches {arg!r}")


def cmd_ledger_forget(ctx: Context) -> int:
    return _change_entry(ctx, lambda ledger, key: ledger.forget(key),
                         "forgotten: {key} (it will be grabbed again if a source brings it)",
                         "nothing in the ledger matches {arg!r}")


def _change_entry(ctx: Context, change: Callable[[Ledger, str], bool], done: str, missing: str) -> int:
    with ctx.ledger() as ledger:
        entry = _find(ledger, ctx.args.key)
        if entry is None or not change(ledger, entry.key):
            ctx.err.write("error: " + missing.format(arg=ctx.args.key) + "\n")
            return EXIT_USAGE
    ctx.print(done.format(key=entry.key))
    return EXIT_OK


def cmd_rss_test(ctx: Context) -> int:
    """The real feed pipeline into a sink that records and submits nothing."""
    from daemon115.display import human_size, table
    from daemon115.sources.feeds import FeedPoller, rss_test_rows

    cfg = ctx.config
    feeds = [f for f in cfg.feeds if ctx.args.feed in (None, f.name)]
    if not feeds:
        ctx.err.write(f"error: no feed named {ctx.args.feed!r} in the config\n" if ctx.args.feed
                      else "error: the config has no feeds\n")
        return EXIT_USAGE
    with ctx.ledger() as ledger, FeedPoller(feeds, ledger, record=False) as poller:
        results = poller.poll_all(force=True)
    rows = rss_test_rows(results)
    if ctx.args.json:
        ctx.print_json(rows)
    else:
        ctx.print(table(["feed", "grab", "rule", "size", "title", "why"],
                        [[r["feed"], "yes" if r["grab"] else "no", r["rule"] or "-", human_size(r["size"]),
                          _shorten(r["title"] or "", 60), r["reason"]] for r in rows]))
    for result in results:
        if result.error:
            ctx.err.write(f"feed {result.feed}: {result.error}\n")
    return EXIT_FAILED if any(r.status == "error" for r in results) else EXIT_OK


def cmd_status(ctx: Context) -> int:
    from daemon115 import status
    from daemon115.api.errors import Api115Error

    quota, problem = None, None
    try:
        quota = ctx.connect(quick=True).client.quota()
    except Api115Error as exc:
        problem = str(exc)
    with ctx.ledger() as ledger:
        doc = status.collect(ctx.config, ledger, quota, problem)
    if ctx.args.json:
        ctx.print_json(doc)
    else:
        ctx.print(status.render(doc))
    return EXIT_OK


def cmd_sandbox(ctx: Context) -> int:
    from daemon115.api import sandbox

    token_file = Path(ctx.args.token_file) if ctx.args.token_file else None
    return sandbox.run_cli(ctx.args.host, ctx.args.port, token_file, ctx.out, seed=ctx.args.seed)


def cmd_demo(ctx: Context) -> int:
    from daemon115 import demo

    return demo.run(ctx.out)


# --- parsing ---------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="daemon115", description="Keeps a 115 cloud drive fed with downloads.")
    parser.add_argument("-c", "--config", metavar="PATH", help="config file (default: $DAEMON115_CONFIG, "
                        "$XDG_CONFIG_HOME/daemon115/config.yaml, /etc/daemon115/config.yaml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[Context], int], help: str, *, json_flag: bool = False,
                parent: Any = sub) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        if json_flag:
            p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
        return p

    p = command("check", cmd_check, "validate the config; every problem with its key path")
    p.add_argument("--online", action="store_true", help="also check the token against 115")
    command("whoami", cmd_whoami, "account, space and VIP info", json_flag=True)
    command("quota", cmd_quota, "cloud-download quota", json_flag=True)
    command("tasks", cmd_tasks, "the cloud-download task list, all pages", json_flag=True)

    auth = sub.add_parser("auth", help="the token file: import, status, refresh").add_subparsers(
        dest="auth_command", required=True, metavar="ACTION")
    p = command("import", cmd_auth_import, "write the token file", parent=auth)
    p.add_argument("--access-token", required=True, metavar="T", help="the access token ('-' reads stdin)")
    p.add_argument("--refresh-token", required=True, metavar="R", help="the refresh token ('-' reads stdin)")
    p.add_argument("--expires-in", type=int, default=7200, metavar="S",
                   help="seconds until the access token expires (default 7200)")
    command("status", cmd_auth_status, "show the token state (never the token)", json_flag=True, parent=auth)
    command("refresh", cmd_auth_refresh, "refresh the access token now", parent=auth)
    p = command("login", cmd_auth_login, "QR-code login (PKCE device flow); writes the token file", parent=auth)
    p.add_argument("--client-id", required=True, metavar="APP_ID", help="your app's APP ID on 115's open platform")
    p.add_argument("--no-qr", action="store_true", help="print only the QR code's content, not the picture")

    p = command("add", cmd_add, "queue and submit links by hand")
    p.add_argument("urls", nargs="+", metavar="URL", help="magnet, ed2k, http(s) or ftp links")
    p.add_argument("--target", metavar="ID", help="115 folder id (default: submit.default_target)")
    p.add_argument("--force", action="store_true", help="ignore the ledger's dedup")
    command("run", cmd_run, "the long-running daemon, in the foreground, until SIGTERM or SIGINT")
    rss = sub.add_parser("rss", help="feeds: try them without grabbing").add_subparsers(
        dest="rss_command", required=True, metavar="ACTION")
    p = command("test", cmd_rss_test, "poll feeds and show per entry whether and by which rule it would be grabbed",
                json_flag=True, parent=rss)
    p.add_argument("feed", nargs="?", metavar="FEED_NAME")
    p = command("cleanup", cmd_cleanup, "run cleanup policies now")
    p.add_argument("--dry-run", action="store_true", help="print what would be cleared/deleted; change nothing")
    p.add_argument("--policy", metavar="NAME", help="run only this policy")
    command("status", cmd_status, "queue, feeds, token, quota and the daemon's state", json_flag=True)
    command("once", cmd_once, "one full pass: read every source, submit everything queued, exit")

    ledger = sub.add_parser("ledger", help="what the ledger holds").add_subparsers(
        dest="ledger_command", required=True, metavar="ACTION")
    p = command("list", cmd_ledger_list, "list the links in the ledger", json_flag=True, parent=ledger)
    p.add_argument("--status", choices=["queued", "submitting", "submitted", "failed"])
    p = command("show", cmd_ledger_show, "the whole story of one link", parent=ledger)
    p.add_argument("key", metavar="KEY", help="info hash, URL or ledger key")
    p = command("retry", cmd_ledger_retry, "queue a failed link again", parent=ledger)
    p.add_argument("key", metavar="KEY")
    p = command("forget", cmd_ledger_forget, "remove a link from the ledger (it may be grabbed again)",
                parent=ledger)
    p.add_argument("key", metavar="KEY")

    p = command("sandbox", cmd_sandbox, "run the built-in 115 Open API simulator on loopback")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--token-file", metavar="PATH", help="where to write a ready token file (default: a temp dir)")
    p.add_argument("--seed", type=int, default=None, help="seed for injected faults")
    command("demo", cmd_demo, "start the sandbox and show the commands working against it")
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    ctx = Context(args, out, err)
    return run_command(ctx)


def run_command(ctx: Context) -> int:
    from daemon115.config import ConfigError

    try:
        return int(ctx.args.func(ctx))
    except ConfigError as exc:
        for problem in exc.problems:
            ctx.err.write(f"{problem}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - every failure becomes a message and an exit code, never a traceback
        from daemon115.api.errors import Api115Error, exit_code_for

        if isinstance(exc, Api115Error):
            ctx.err.write(f"error: {exc}\n")
            return exit_code_for(exc)
        from daemon115.ledger import InvalidTransition, LedgerError

        if isinstance(exc, InvalidTransition):
            ctx.err.write(f"error: {exc}\n")
            return EXIT_USAGE
        if isinstance(exc, LedgerError):
            ctx.err.write(f"error: {exc}; nothing was lost, try again\n")
            return EXIT_FAILED
        if isinstance(exc, OSError):
            ctx.err.write(f"error: {exc.strerror or exc}: {exc.filename or ''}\n")
            return EXIT_FAILED
        raise
