"""Which feed entries a feed's rules grab, and why every other entry is left alone.

Pure: an entry and a feed's config in, a verdict out. `rss test` prints the reasons, so every rejection says which
rule rejected the entry and on what grounds. Decisions:

- Rules are tried in order and the first that accepts the entry wins (its name and target go with the grab).
- ``accept_all: true`` grabs whatever no rule accepted, with the feed's target; a feed with neither rules nor
  ``accept_all`` grabs nothing.
- Unknown values pass their filter: an entry of unknown size passes ``min_size``/``max_size`` unless the rule says
  ``require_size: true``; unknown publication time passes ``max_age``; unknown seeders pass ``min_seeders``.
- ``episodes: true`` grabs only the first release of an episode (``episodes_seen`` answers from the memory of
  earlier grabs, across feeds); a proper / repack / vN gets through only with ``allow_repack: true`` and only if no
  release of that version or later was grabbed. A title with no recognisable episode is judged by the other
  filters alone (a batch or a movie is not an episode to deduplicate).
- Sizes in messages use decimal units (``9.1 GB``), like ``KB``/``MB``/``GB`` in the config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from daemon115.config import Feed, Rule
from daemon115.sources.episodes import EpisodeKey, parse_episode

__all__ = ["EpisodeKey", "FeedEntry", "Verdict", "evaluate", "format_duration", "format_size"]

NO_LINK = "the entry has no download link"
NO_RULES = "the feed has no rules and no accept_all: true"


@dataclass(frozen=True)
class FeedEntry:
    """One feed item, reduced to what choosing and grabbing it needs."""

    feed: str
    entry_id: str  # the guid, else the link: what "seen before" is keyed on
    title: str
    link: str | None  # what is grabbed: the magnet, else the .torrent URL, else the page link
    info_hash: str | None  # 40 lowercase hex; from the magnet when there is one
    magnet: str | None  # canonical magnet URI
    torrent_url: str | None
    size: int | None  # bytes
    seeders: int | None
    published: float | None  # Unix seconds


@dataclass(frozen=True)
class Verdict:
    grab: bool
    rule: str | None
    reason: str
    target: str | None
    episode: EpisodeKey | None = None  # set on grabs by an ``episodes: true`` rule, to remember


def evaluate(entry: FeedEntry, feed: Feed, *, now: float,
             episodes_seen: Callable[[EpisodeKey], bool]) -> Verdict:
    if entry.link is None:
        return Verdict(False, None, NO_LINK, None)
    reasons: list[str] = []
    episode: _Lazy = _Lazy(entry.title)
    for rule in feed.rules:
        rejection = _rejection(rule, entry, now, episode, episodes_seen)
        if rejection is None:
            return Verdict(True, rule.name, f"rule {rule.name} matches", rule.target or feed.target,
                           episode.value if rule.episodes else None)
        reasons.append(f"rule {rule.name}: {rejection}")
    if feed.accept_all:
        return Verdict(True, None, "accept_all: true", feed.target)
    if not feed.rules:
        return Verdict(False, None, NO_RULES, None)
    return Verdict(False, None, "; ".join(reasons), None)


class _Lazy:
    """The entry's episode, parsed at most once and only if an ``episodes`` rule gets that far."""

    __slots__ = ("_done", "_title", "_value")

    def __init__(self, title: str) -> None:
        self._title = title
        self._done = False
        self._value: EpisodeKey | None = None

    @property
    def value(self) -> EpisodeKey | None:
        if not self._done:
            self._value = parse_episode(self._title)
            self._done = True
        return self._value


def _rejection(rule: Rule, entry: FeedEntry, now: float, episode: _Lazy,
               episodes_seen: Callable[[EpisodeKey], bool]) -> str | None:
    """Why ``rule`` does not grab ``entry``, or None when it does."""
    title = entry.title
    if rule.include and not any(rx.pattern.search(title) for rx in rule.include):
        return "title does not match any include"
    for rx in rule.exclude:
        if rx.pattern.search(title):
            return f"title matches exclude {rx.source!r}"
    size_problem = _size_rejection(rule, entry.size)
    if size_problem:
        return size_problem
    if rule.max_age is not None and entry.published is not None and now - entry.published > rule.max_age:
        return (f"published {format_duration(now - entry.published)} ago, older than max_age "
                f"{format_duration(rule.max_age)}")
    if rule.min_seeders is not None and entry.seeders is not None and entry.seeders < rule.min_seeders:
        return f"{entry.seeders} seeders, below min_seeders {rule.min_seeders}"
    if rule.episodes:
        return _episode_rejection(rule, episode.value, episodes_seen)
    return None


def _size_rejection(rule: Rule, size: int | None) -> str | None:
    if size is None:
        return "size unknown and require_size is set" if rule.require_size else None
    if rule.min_size is not None and size < rule.min_size:
        return f"size {format_size(size)} below min_size {format_size(rule.min_size)}"
    if rule.max_size is not None and size > rule.max_size:
        return f"size {format_size(size)} above max_size {format_size(rule.max_size)}"
    return None


def _episode_rejection(rule: Rule, episode: EpisodeKey | None,
                       episodes_seen: Callable[[EpisodeKey], bool]) -> str | None:
    if episode is None:
        return None
    if episode.is_repack and rule.allow_repack:
        if episodes_seen(episode):
            return f"{episode.label} of {episode.show!r}: this version (or a later one) was already grabbed"
        return None
    if episodes_seen(episode.base()):
        note = " (this is a repack; allow_repack is not set)" if episode.is_repack else ""
        return f"{episode.base().label} of {episode.show!r} was already grabbed{note}"
    return None


def format_size(size: int) -> str:
    """Bytes in decimal units with at most two decimals: ``9.1 GB``, ``316.48 MB``, ``512 B``."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            text = f"{value:.2f}".rstrip("0").rstrip(".") if unit != "B" else str(size)
            return f"{text} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """Seconds in the config's units with at most one decimal: ``3.2d``, ``6h``, ``10m``, ``30s``."""
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds / length:.1f}".rstrip("0").rstrip(".") + unit
    return f"{seconds:.0f}s"
