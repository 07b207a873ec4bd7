"""Show + season + episode (+ release version) read from a release title, for rules with ``episodes: true``.

Pure functions. The point is to recognise two releases of one episode from different groups or feeds as the same
episode, so the show name is folded hard: release-group brackets dropped, ``.``/``_`` read as spaces, punctuation
and case ignored, and of ``Chinese name / Japanese name / English name`` only the last alias kept (groups agree on
the romanised name far more often than on the translated ones).

Forms, tried in this order (the first that matches decides): ``S01E02``, ``1x02``, ``第07话`` / ``第07集``,
``EP07`` / ``E07``, ``- 07``, ``[07]``, ``#07``. The forms without a season (anime numbering) take the season from
the show part (``S2``, ``Season 2``, ``2nd Season``, ``第二季``) or default to 1. A year is not an episode
(``Movie - 2014``), nor is a range (``[01-06]``), a resolution (``[1080p]``) or a checksum (``[3194D881]``).

Versions: ``v2`` after the number, or PROPER / REPACK / RERIP in the title, make a release version 2 (or N for vN).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_S_E = re.compile(r"(?<![A-Za-z0-9])S(\d{1,2})[ .]?E(\d{1,4})(?:v(\d))?(?![0-9])", re.IGNORECASE)
_N_X_N = re.compile(r"(?<![A-Za-z0-9])(\d{1,2})x(\d{1,3})(?:v(\d))?(?![A-Za-z0-9])", re.IGNORECASE)
_CJK = re.compile(r"第\s*(\d{1,4})\s*[话話集]")
_EP = re.compile(r"(?<![A-Za-z0-9])(?:EP\.?\s?(\d{1,4})|E(\d{2,4}))(?:v(\d))?(?![0-9])", re.IGNORECASE)
_DASH = re.compile(r"\s[-\u2013\u2014]\s*(\d{1,4})(?:v(\d))?(?=$|[\s\[\](){}\uff08【.,])", re.IGNORECASE)
_BRACKET = re.compile(r"[\[【](\d{1,3})(?:v(\d))?[\]】]", re.IGNORECASE)
_HASH = re.compile(r"(?<![&\w])#(\d{1,4})(?![0-9])")

_LEADING_GROUPS = re.compile(r"^\s*((?:[\[【(\uff08][^\]】)\uff09]*[\]】)\uff09]\s*)+)")
_DECORATION = re.compile(r"★[^★]*★")  # "★04月新番★": a season banner, not part of the name
_GROUP = re.compile(r"[\[【(\uff08]([^\]】)\uff09]*)[\]】)\uff09]")
_SEASON_SUFFIX = re.compile(
    r"(?:\bS(\d{1,2})|\bSeason\s*(\d{1,2})|\b(\d{1,2})(?:st|nd|rd|th)\s+Season|第\s*([0-9一二三四五六七八九十]{1,3})\s*[季期])\s*$",
    re.IGNORECASE,
)
_REPACK_WORD = re.compile(r"(?<![A-Za-z])(?:proper|repack|rerip)(?![A-Za-z])", re.IGNORECASE)
_VERSION_TAG = re.compile(r"(?<![A-Za-z0-9])v([2-9])(?![0-9])", re.IGNORECASE)
_NOT_WORD = re.compile(r"[\W_]+")
_CJK_NUMERALS = {"一": 1, "二": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9, "十": 10}


@dataclass(frozen=True)
class EpisodeKey:
    """One release's place in a show; ``version`` is 1 for the original, 2+ for a proper / repack / vN."""

    show: str
    season: int
    episode: int
    version: int = 1

    @property
    def label(self) -> str:
        tag = f"v{self.version}" if self.version > 1 else ""
        return f"S{self.season:02d}E{self.episode:02d}{tag}"

    @property
    def is_repack(self) -> bool:
        return self.version > 1

    def base(self) -> EpisodeKey:
        return EpisodeKey(self.show, self.season, self.episode)


def parse_episode(title: str) -> EpisodeKey | None:
    """The episode a release title names, or None when it names none (a batch, a movie, an unknown form)."""
    title = " ".join(title.split())
    found = _find(title)
    if found is None:
        return None
    start, end, season, episode, version = found
    show, show_season = _show_name(title[:start])
    if not show:
        return None
    if season is None:
        season = show_season or 1
    version = max(version, _version_after(title[end:]))
    return EpisodeKey(show, season, episode, version)


def _find(title: str) -> tuple[int, int, int | None, int, int] | None:
    """(start, end, season or None, episode, version) of the first form that matches."""
    m = _S_E.search(title)
    if m:
        return m.start(), m.end(), int(m.group(1)), int(m.group(2)), _v(m.group(3))
    m = _N_X_N.search(title)
    if m:
        return m.start(), m.end(), int(m.group(1)), int(m.group(2)), _v(m.group(3))
    m = _CJK.search(title)
    if m:
        return m.start(), m.end(), None, int(m.group(1)), 1
    m = _EP.search(title)
    if m:
        return m.start(), m.end(), None, int(m.group(1) or m.group(2)), _v(m.group(3))
    for m in _DASH.finditer(title):
        number = int(m.group(1))
        if len(m.group(1)) == 4 and 1900 <= number <= 2099:
            continue  # a year, not an episode
        return m.start(), m.end(), None, number, _v(m.group(2))
    m = _BRACKET.search(title)
    if m:
        return m.start(), m.end(), None, int(m.group(1)), _v(m.group(2))
    m = _HASH.search(title)
    if m:
        return m.start(), m.end(), None, int(m.group(1)), 1
    return None


def _v(group: str | None) -> int:
    return int(group) if group else 1


def _version_after(rest: str) -> int:
    m = _VERSION_TAG.search(rest)
    version = int(m.group(1)) if m else 1
    if _REPACK_WORD.search(rest):
        version = max(version, 2)
    return version


def _show_name(prefix: str) -> tuple[str, int | None]:
    """The folded show name from the text before the episode number, and a season it states (``S2``)."""
    prefix = _DECORATION.sub("", prefix)
    groups = _LEADING_GROUPS.match(prefix)
    rest = prefix[groups.end():] if groups else prefix
    if not _NOT_WORD.sub("", rest) and groups:
        # "[Group][Show Name][07]": the show is the last bracket before the number
        inner = _GROUP.findall(groups.group(1))
        rest = inner[-1] if inner else ""
    rest = rest.replace(".", " ").replace("_", " ").strip(" -\u2013\u2014:|/[(\uff08【")
    alias = rest.rsplit(" / ", 1)[-1] if " / " in rest else rest
    season = None
    m = _SEASON_SUFFIX.search(alias.strip())
    if m:
        season = _season_number(next(g for g in m.groups() if g))
        alias = alias.strip()[: m.start()]
    return " ".join(_NOT_WORD.sub(" ", alias.replace("'", "").replace("\u2019", "").lower()).split()), season


def _season_number(text: str) -> int | None:
    if text.isdigit():
        return int(text)
    if text == "十":
        return 10
    if len(text) == 2 and text[0] == "十":
        return 10 + _CJK_NUMERALS.get(text[1], 0)
    return _CJK_NUMERALS.get(text)
