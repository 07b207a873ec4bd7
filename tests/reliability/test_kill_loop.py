"""Exactly once under fire: `daemon115 run` SIGKILLed at random moments while links pour in and 115 misbehaves.

The load is mixed and concurrent: files dropped into two watch folders (atomic moves, renames of partial files and
plain slow writes, some of them real .torrent files), two feeds on loopback that publish new magnets over time, and
`daemon115 add` commands run beside the daemon. The sandbox fails about a fifth of the calls on every endpoint the
daemon uses (5xx, connections dropped before and after 115 acted, delays, cut-off bodies), expires the access token
now and then and rate-limits refreshes. After the last kill the faults stop and one clean run drains the queue.

Short form: 20 kills (CI). --long (or DAEMON115_LONG=1): 500 kills.
"""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import requests

from daemon115.api.sandbox import Fault, Sandbox, TokenPair
from daemon115.fsutil import file_lock
from daemon115.ledger import Ledger
from daemon115.links import parse_torrent

SHORT_KILLS, LONG_KILLS = 20, 500
SEED = 20261202
SPEEDUP = "30"  # feed polls every 2 s instead of every minute (the shortest interval a config allows)

ADD = "/open/offline/add_task_urls"
LIST = "/open/offline/get_task_list"
FOLDER_INFO = "/open/folder/get_info"
FOLDER_ADD = "/open/folder/add"
REFRESH = "/open/refreshToken"
QUOTA = "/open/offline/get_quota_info"

# (kind, rate, delay) per endpoint, each about 20 % in all; faults of one endpoint are tried in this order.
# drop_after and delay let 115 act; the others answer without acting. Delays stay below the 2 s timeout: a commit
# that lands after the client gave up and looked is a different race (see the README).
FAULTS: dict[str, list[tuple[str, float, float]]] = {
    ADD: [("http500", 0.04, 0), ("http502", 0.02, 0), ("http503", 0.02, 0), ("drop_before", 0.03, 0),
          ("drop_after", 0.05, 0), ("delay", 0.03, 0.4), ("malformed", 0.02, 0)],
    LIST: [("http500", 0.04, 0), ("http503", 0.03, 0), ("drop_before", 0.03, 0), ("drop_after", 0.03, 0),
           ("delay", 0.04, 0.2), ("malformed", 0.04, 0)],
    FOLDER_INFO: [("http502", 0.05, 0), ("drop_after", 0.05, 0), ("delay", 0.05, 0.2), ("malformed", 0.06, 0)],
    FOLDER_ADD: [("http500", 0.06, 0), ("drop_before", 0.06, 0), ("drop_after", 0.1, 0)],
    QUOTA: [("http503", 0.1, 0), ("drop_before", 0.1, 0)],
    # no drop_after or delay here: 115 rotates the refresh token when it answers, so a lost answer (or a client
    # killed while 115 is still answering) kills the grant for good, whoever the client is
    REFRESH: [("http503", 0.05, 0), ("drop_before", 0.05, 0), ("malformed", 0.05, 0),
              ("refresh_too_frequent", 0.08, 0)],
}

FEED_TARGETS = ("/Feeds/Kill loop", "4")
ADD_TARGETS = ("5", "/Added/CLI")
TORRENTS = ("leaves.webtorrent-fixtures.torrent", "alice.webtorrent-fixtures.torrent",
            "numbers_multifile.webtorrent-fixtures.torrent", "LICENSE_trailing_newline.flexget.torrent",
            "mikan_45e14c26b0a78b1b3bdbc3dd2763a1242ee420b4.konobangu.torrent",
            "mikan_58ab31bec4f710fd75816b590728bf0af1bdf1ca.konobangu.torrent",
            "mikan_e22d1c0062f2a4f4c49aebfb8d84fb4d85a7c375.konobangu.torrent",
            "ubuntu-12.04.1_test.flexget.torrent")
REAL_TORRENTS = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "real-world" / "torrents"


@dataclass
class Produced:
    """Every link the test made, with the target it was sent to, and every drop file by folder."""

    targets: dict[str, str] = field(default_factory=dict)  # info hash -> target as the source named it
    drops: dict[Path, list[str]] = field(default_factory=dict)
    adds_running: list[tuple[subprocess.Popen, list[str]]] = field(default_factory=list)
    adds_done: list[tuple[str, int, list[str]]] = field(default_factory=list)  # output, exit code, its links
    lock: threading.Lock = field(default_factory=threading.Lock)

    def collect_adds(self, *, wait: bool = False) -> None:
        """Keep the output of finished `add` commands (a long run would otherwise hold hundreds of pipes open)."""
        still = []
        for proc, hashes in self.adds_running:
            if wait or proc.poll() is not None:
                output = proc.communicate(timeout=120)[0]
                self.adds_done.append((output, proc.returncode, hashes))
            else:
                still.append((proc, hashes))
        self.adds_running = still

    def link(self, info_hash: str, target: str) -> None:
        with self.lock:
            assert info_hash not in self.targets, f"the test made {info_hash} twice"
            self.targets[info_hash] = target


def magnet(rng: random.Random, label: str) -> tuple[str, str]:
    info_hash = f"{rng.getrandbits(160):040x}"
    return info_hash, f"magnet:?xt=urn:btih:{info_hash}&dn={label}"


def write_config(tmp_path: Path, sandbox: Sandbox, watch: list[Path], feeds: list[str]) -> Path:
    folders = "".join(f"  - {{path: '{w}', target: '{i + 1}', settle: 200ms, rescan_every: 2s}}\n"
                      for i, w in enumerate(watch))
    feed_lines = "".join(f"  - {{name: feed{i}, url: '{url}', interval: 1m, accept_all: true, "
                         f"target: '{FEED_TARGETS[i]}'}}\n" for i, url in enumerate(feeds))
    config = tmp_path / "config.yaml"
    config.write_text(f"""\
api: {{base_url: "{sandbox.url}", passport_url: "{sandbox.url}", qrcode_url: "{sandbox.url}", min_interval: 0s,
       timeout: 2s, max_retries: 1}}
auth: {{token_file: "{tmp_path / 'token.json'}"}}
ledger: {{path: "{tmp_path / 'ledger.sqlite3'}"}}
submit: {{batch_size: 8, batch_window: 200ms, max_attempts: 1000, quota_check_every: 1s}}
reconcile: {{every: 1m, active_every: 1m}}
logging: {{format: json, level: info}}
watch:
{folders}feeds:
{feed_lines}""")
    return config


# --- the load ------------------------------------------------------------------------------------------------------

def drop_files(stop: threading.Event, rng: random.Random, watch: list[Path], staging: Path, made: Produced) -> None:
    """Drops every 50-350 ms: moved in from outside, renamed from .part, or written slowly in place."""
    torrents = list(TORRENTS)
    number = 0
    while not stop.wait(rng.uniform(0.05, 0.35)):
        number += 1
        folder = rng.choice(watch)
        target = str(watch.index(folder) + 1)
        if torrents and rng.random() < 0.03:
            fixture = torrents.pop()
            data = (REAL_TORRENTS / fixture).read_bytes()
            name = f"t{number:05d}.torrent"
            made.link(parse_torrent(data).info_hash, target)
        else:
            lines = [magnet(rng, f"drop-{number}-{i}") for i in range(rng.randint(1, 3))]
            for info_hash, _ in lines:
                made.link(info_hash, target)
            data = ("# dropped by the kill loop\n" + "\n".join(url for _, url in lines) + "\n").encode()
            name = f"d{number:05d}.magnet"
        with made.lock:
            made.drops.setdefault(folder, []).append(name)
        write_drop(rng, folder / name, staging / name, data)


def write_drop(rng: random.Random, path: Path, outside: Path, data: bytes) -> None:
    how = rng.random()
    if how < 0.4:  # atomic move-in from the same filesystem
        outside.write_bytes(data)
        os.rename(outside, path)
    elif how < 0.7:  # a partial name the watcher ignores, then the rename
        partial = path.with_name(path.name + ".part")
        partial.write_bytes(data)
        os.rename(partial, path)
    else:  # written in place in two pieces, as a slow copy would
        with open(path, "wb") as out:
            out.write(data[: len(data) // 2])
            out.flush()
            time.sleep(0.03)
            out.write(data[len(data) // 2:])


def publish_feed_items(stop: threading.Event, rng: random.Random, feeds: list, made: Produced) -> None:
    number = 0
    while not stop.wait(rng.uniform(0.2, 0.6)):
        number += 1
        index = rng.randrange(len(feeds))
        info_hash, url = magnet(rng, f"feed{index}-item-{number}")
        made.link(info_hash, FEED_TARGETS[index])
        feeds[index].publish(guid=f"item-{number}", title=f"Kill loop item {number}", magnet=url,
                             published=time.time())


def run_add_commands(stop: threading.Event, rng: random.Random, config: Path, made: Produced) -> None:
    """`daemon115 add` beside the daemon, at most two at a time."""
    number = 0
    while not stop.wait(rng.uniform(0.4, 1.2)):
        made.collect_adds()
        if len(made.adds_running) >= 2:
            continue
        number += 1
        target = rng.choice(ADD_TARGETS)
        links = [magnet(rng, f"add-{number}-{i}") for i in range(rng.randint(1, 3))]
        for info_hash, _ in links:
            made.link(info_hash, target)
        proc = subprocess.Popen([sys.executable, "-m", "daemon115", "-c", str(config), "add", "--target", target,
                                 *(url for _, url in links)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        made.adds_running.append((proc, [h for h, _ in links]))


def arm_faults(sandbox: Sandbox) -> None:
    # one of each kind the summary insists on comes first, so that check never rests on the dice alone
    for kind in ("http500", "drop_after", "drop_before", "delay", "malformed"):
        sandbox.inject(Fault(kind, endpoint=ADD, times=1, delay=0.3 if kind == "delay" else 0.0))
    for endpoint, faults in FAULTS.items():
        for kind, rate, delay in faults:
            sandbox.inject(Fault(kind, endpoint=endpoint, times=None, rate=rate, delay=delay))


# --- the test ------------------------------------------------------------------------------------------------------

def test_run_killed_at_random_under_mixed_load_and_faults_accepts_every_link_exactly_once(
        sandbox, token_file, tmp_path, feed_servers, daemons, wait_for, long_form):
    kills_wanted = LONG_KILLS if long_form else SHORT_KILLS
    rng = random.Random(SEED)
    watch = [tmp_path / "watch-a", tmp_path / "watch-b"]
    staging = tmp_path / "staging"
    for folder in (*watch, staging, tmp_path / "logs"):
        folder.mkdir()
    feeds = [feed_servers(), feed_servers()]
    config = write_config(tmp_path, sandbox, watch, [f.url for f in feeds])
    made = Produced()
    arm_faults(sandbox)

    stop = threading.Event()
    load = [threading.Thread(target=drop_files, args=(stop, random.Random(rng.random()), watch, staging, made)),
            threading.Thread(target=publish_feed_items, args=(stop, random.Random(rng.random()), feeds, made)),
            threading.Thread(target=run_add_commands, args=(stop, random.Random(rng.random()), config, made))]
    for thread in load:
        thread.start()
    kills = expiries = in_flight = 0
    try:
        while kills < kills_wanted:
            daemon = daemons(config, tmp_path / "logs" / f"run-{kills:03d}.log", {"DAEMON115_SPEEDUP": SPEEDUP})
            time.sleep(rng.uniform(0.1, 1.6))
            if rng.random() < 0.3:  # every access token dies at once; a refresh follows
                sandbox.inject(Fault("expire_access"))
                sandbox.clock.advance(61)  # past 115's refresh window, so only the injected limit refuses it
                expiries += 1
            if rng.random() < 0.5:
                time.sleep(rng.uniform(0.1, 1.6))
            else:  # half the kills aim at a batch in flight: the moment exactly-once is at stake
                in_flight += wait_for_batch(daemon.log, timeout=rng.uniform(0.5, 2.5))
                time.sleep(rng.uniform(0.0, 0.03))
            assert daemon.alive(), f"the daemon exited by itself:\n{daemon.log.read_text()[-3000:]}"
            daemon.kill()
            kills += 1
    finally:
        stop.set()
        for thread in load:
            thread.join()
    made.collect_adds(wait=True)

    sandbox.clear_faults()
    sandbox.clock.advance(61)
    skip_backoff(tmp_path / "ledger.sqlite3")
    final = daemons(config, tmp_path / "logs" / "final.log", {"DAEMON115_SPEEDUP": SPEEDUP})
    expected = dict(made.targets)
    try:
        wait_for(lambda: settled(tmp_path / "ledger.sqlite3", expected) and all_moved(made.drops),
                 timeout=240 if long_form else 60, what="the clean run to submit every link and move every drop",
                 step=0.25)
        problems = []
    except AssertionError as exc:  # said below with everything else that is wrong
        problems = [str(exc)]
    final_exit = final.stop()

    stats = {**sandbox.stats(), "tasks_list": sandbox.tasks()}
    fired = Counter(f["kind"] for f in stats["faults_fired"])
    recoveries = sum(log.read_bytes().count(b'"event": "recovered"') for log in (tmp_path / "logs").iterdir())
    print(f"\nkill loop: {kills} kills, {len(expected)} links ({sum(map(len, made.drops.values()))} drop files, "
          f"{sum(len(f.published()) for f in feeds)} feed items, {len(made.adds_done)} add commands), "
          f"{len(stats['add_calls'])} add_task_urls calls, {len(stats['faults_fired'])} faults fired "
          f"({dict(sorted(fired.items()))}), {expiries} token expiries, {stats['refresh_ok']} refreshes, "
          f"{in_flight} kills aimed at a batch in flight, {recoveries} restarts found a batch left submitting")

    with Ledger(tmp_path / "ledger.sqlite3") as ledger:
        entries = {e.key: e for e in ledger.entries()}
        counts = ledger.counts()
    folder_ids = {t: (t if t.isdigit() else sandbox.add_folder(t)) for t in {*FEED_TARGETS, *ADD_TARGETS}}
    folder_ids.update({str(i + 1): str(i + 1) for i in range(len(watch))})
    problems += [] if final_exit == 0 else [f"the clean run exited {final_exit} on SIGTERM"]
    problems += violations(made, entries, counts, stats, folder_ids)
    problems += token_file_problems(tmp_path / "token.json", config)
    assert problems == [], "\n".join(problems)  # every invariant is checked, and every broken one listed


def violations(made: Produced, entries: dict, counts: dict[str, int], stats: dict,
               folder_ids: dict[str, str]) -> list[str]:
    """What went wrong, one line per broken invariant (a long run should say everything it found, not the first)."""
    expected = made.targets
    cloud = {t["info_hash"]: t for t in stats["tasks_list"]}
    fired = Counter(f["kind"] for f in stats["faults_fired"])
    bad_adds = [(code, out) for out, code, hashes in made.adds_done
                if code not in (0, 1) or not all(f"queued: {h}" in out for h in hashes)]
    wrong_folder = {h: (cloud[h]["wp_path_id"], folder_ids[t]) for h, t in expected.items()
                    if h in cloud and cloud[h]["wp_path_id"] != folder_ids[t]}
    wrong_record = {h: (entries[h].target, entries[h].target_path) for h, t in expected.items() if h in entries
                    and (entries[h].target, entries[h].target_path) != (folder_ids[t], None if t.isdigit() else t)}
    checks = [
        # each add recorded its links and exited 0 (or 1: 115 unreachable, links queued), whatever 115 did
        (not bad_adds, f"{len(bad_adds)} add commands failed, e.g. {bad_adds[:2]}"),
        (counts == {"queued": 0, "submitting": 0, "submitted": len(expected), "failed": 0}, f"ledger counts {counts}"),
        (set(entries) == set(expected),  # nothing lost, nothing invented
         f"ledger vs made: {len(set(expected) - set(entries))} missing, {len(set(entries) - set(expected))} extra"),
        (all(e.info_hash == key for key, e in entries.items()), "ledger rows without their info hash"),
        (set(stats["accepted_hashes"]) == set(expected),
         f"accepted vs made: {len(set(expected) - set(stats['accepted_hashes']))} never accepted"),
        (Counter(stats["accepted_hashes"].values()) == {1: len(expected)},  # each accepted exactly once
         f"accepted more than once: {[h for h, n in stats['accepted_hashes'].items() if n > 1][:5]}"),
        (stats["duplicates"] == {},  # never sent again after 115 had it (115 would hide that behind 10008)
         f"{len(stats['duplicates'])} links resent after 115 had them (10008)"),
        (stats["internal_errors"] == [], f"sandbox internal errors: {stats['internal_errors'][:1]}"),
        (set(cloud) == set(expected), "the task list and the ledger disagree on the info hashes"),
        (wrong_folder == {}, f"{len(wrong_folder)} tasks in another folder than their source named"),
        (wrong_record == {}, f"{len(wrong_record)} ledger rows do not record the folder id they went to, e.g. "
                             f"{list(wrong_record.values())[:2]}"),
        (all_moved(made.drops), "drops not all in .done/ under their own names"),
        ({"http500", "drop_after", "drop_before", "delay", "malformed"} <= set(fired), f"faults fired: {fired}"),
    ]
    return [message for ok, message in checks if not ok]


def token_file_problems(path: Path, config: Path) -> list[str]:
    """The token file survived: valid JSON with both tokens, 0600, and the grant still works."""
    try:
        doc = json.loads(path.read_text())
    except ValueError as exc:
        return [f"the token file is not valid JSON: {exc}"]
    problems = []
    if not set(doc) >= {"access_token", "refresh_token", "expires_at"}:
        problems.append(f"the token file lacks keys: {sorted(doc)}")
    if stat.S_IMODE(path.stat().st_mode) != 0o600:
        problems.append(f"the token file has mode {stat.S_IMODE(path.stat().st_mode):o}")
    whoami = subprocess.run([sys.executable, "-m", "daemon115", "-c", str(config), "whoami", "--json"],
                            capture_output=True, text=True, timeout=60)
    if whoami.returncode != 0:
        problems.append(f"the grant no longer works: {whoami.stderr.strip()[-300:]}")
    return problems


def wait_for_batch(log: Path, timeout: float) -> int:
    """1 as soon as the daemon logs that it is sending a batch, 0 when none was sent within ``timeout``."""
    seen = log.read_bytes().count(b'"batch_sending"')
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.read_bytes().count(b'"batch_sending"') > seen:
            return 1
        time.sleep(0.005)
    return 0


def skip_backoff(path: Path) -> None:
    """A link that failed often waits up to an hour; the clean run sends it now (the wait, not the rules, skipped)."""
    with Ledger(path) as ledger:
        for entry in ledger.entries("queued"):
            ledger.requeue(entry.key, delay=0, reason="test: retry now", charge=False)


def settled(path: Path, expected: dict[str, str]) -> bool:
    with Ledger(path) as ledger:
        counts = ledger.counts()
        if counts["queued"] or counts["submitting"] or counts["submitted"] < len(expected):
            return False
        return {e.key for e in ledger.entries("submitted")} >= set(expected)


def all_moved(drops: dict[Path, list[str]]) -> bool:
    """Every drop is in .done/ under its own name (no copy under a second name), none left, none failed."""
    for folder, names in drops.items():
        done = folder / ".done"
        if not done.is_dir() or sorted(os.listdir(done)) != sorted(names):
            return False
        if any(not p.name.startswith(".") for p in folder.iterdir()) or (folder / ".failed").exists():
            return False
    return True


def test_links_settled_from_the_task_list_after_a_lost_answer_record_the_folder_id_of_their_path_target(
        sandbox, token_file, tmp_path):
    """The kill loop's ledger-versus-sandbox check, pinned to the one path that fails it: 115 takes a batch aimed at
    a folder path, the answer is lost, and the links are found in the task list instead."""
    config = write_config(tmp_path, sandbox, [], [])
    sandbox.inject(Fault("drop_after", endpoint=ADD))
    info_hash, url = magnet(random.Random(1), "lost-answer")
    add = subprocess.run([sys.executable, "-m", "daemon115", "-c", str(config), "add", "--target", "/Lost/Answer",
                          url], capture_output=True, text=True, timeout=60)
    assert f"queued: {info_hash}" in add.stdout, add.stdout + add.stderr
    folder_id = sandbox.add_folder("/Lost/Answer")  # the existing folder's id
    assert [t["wp_path_id"] for t in sandbox.tasks()] == [folder_id]
    with Ledger(tmp_path / "ledger.sqlite3") as ledger:
        entry = ledger.get(info_hash)
    assert entry is not None and entry.status == "submitted"
    assert (entry.target, entry.target_path) == (folder_id, "/Lost/Answer")


def test_an_add_that_meets_a_refresh_in_progress_waits_for_the_new_pair_instead_of_giving_up(
        sandbox, token_file, tmp_path):
    """Seen in the long kill loop: another process has refreshed at 115 (so our access token is superseded, 40140126)
    but is still writing the new pair under the token file's lock. The lost authorization is only apparent."""
    config = write_config(tmp_path, sandbox, [], [])
    old = json.loads(token_file.read_text())
    info_hash, url = magnet(random.Random(2), "refresh-race")
    with file_lock(token_file):  # the refreshing process: 115 has answered, the file is not written yet
        answer = requests.post(f"{sandbox.url}{REFRESH}", data={"refresh_token": old["refresh_token"]},
                               timeout=10).json()["data"]
        add = subprocess.Popen([sys.executable, "-m", "daemon115", "-c", str(config), "add", url],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(2.0)  # long enough for the add to start and meet 40140126
        sandbox.write_token_file(token_file, TokenPair(answer["access_token"], answer["refresh_token"],
                                                       answer["expires_in"]))
    output = add.communicate(timeout=60)[0]
    assert add.returncode == 0, output
    assert sandbox.stats()["accepted_hashes"] == {info_hash: 1}


def test_a_batch_still_at_115_when_its_sender_dies_is_not_sent_again(sandbox, token_file, tmp_path, wait_for):
    """Seen in the kill loop: the sender is killed while 115 is still working on its batch; the next process looks
    in the task list before 115 has finished, finds nothing, and (after the grace period) sends it again."""
    config = write_config(tmp_path, sandbox, [], [])
    sandbox.inject(Fault("delay", endpoint=ADD, delay=1.5))  # 115 takes 1.5 s over this batch
    info_hash, url = magnet(random.Random(3), "slow-commit")
    sender = subprocess.Popen([sys.executable, "-m", "daemon115", "-c", str(config), "add", url],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: sandbox.stats()["calls"].get(ADD), timeout=30, what="the batch to reach 115", step=0.01)
    sender.kill()
    sender.wait()
    once = [sys.executable, "-m", "daemon115", "-c", str(config), "once"]
    subprocess.run(once, capture_output=True, timeout=60)  # recovers the batch left submitting
    wait_for(lambda: sandbox.stats()["accepted_hashes"].get(info_hash), timeout=10, what="115 to finish the batch")
    with Ledger(tmp_path / "ledger.sqlite3") as ledger:
        entry = ledger.get(info_hash)
        assert entry is not None
        wait = (entry.next_attempt_at or 0) - time.time()
    time.sleep(max(0.0, wait) + 0.2)  # the grace the daemon gives 115 before a link is sent again
    subprocess.run(once, capture_output=True, timeout=60)
    stats = sandbox.stats()
    assert stats["accepted_hashes"] == {info_hash: 1}
    assert stats["duplicates"] == {}, "the link was sent again although 115 had it (10008)"
