"""Rules over feed entries: which rule grabs an entry, with which target, and the reason for every rejection."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon115.config import Feed, Regex, Rule
from daemon115.rules import EpisodeKey, FeedEntry, Verdict, evaluate, format_duration, format_size

NOW = 1_750_000_000.0
GB = 1_000_000_000
GIB = 1024**3


def entry(title: str = "[SubsPlease] Sousou no Frieren - 07 (1080p)", *, size: int | None = 1_500_000_000,
          seeders: int | None = 20, published: float | None = NOW - 3600, link: str | None = "magnet:?xt=urn:btih:"
          + "a" * 40) -> FeedEntry:
    return FeedEntry(feed="anime", entry_id=title, title=title, link=link, info_hash="a" * 40, magnet=link,
                     torrent_url=None, size=size, seeders=seeders, published=published)


def rule(name: str = "frieren", *, include: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
         **options: object) -> Rule:
    return Rule(name=name, include=tuple(map(Regex.compile, include)), exclude=tuple(map(Regex.compile, exclude)),
                **options)  # type: ignore[arg-type]


def feed(*rules: Rule, accept_all: bool = False, target: str = "100") -> Feed:
    return Feed(name="anime", url="https://example.org/rss", target=target, rules=rules, accept_all=accept_all)


def nothing_seen(key: EpisodeKey) -> bool:
    return False


def judge(e: FeedEntry, f: Feed, seen: Callable[[EpisodeKey], bool] = nothing_seen) -> Verdict:
    return evaluate(e, f, now=NOW, episodes_seen=seen)


# -- include / exclude ------------------------------------------------------------------------------------------


def test_include_matches_anywhere_in_the_title_case_insensitively() -> None:
    verdict = judge(entry(), feed(rule(include=("frieren.*1080P",))))
    assert verdict == Verdict(True, "frieren", "rule frieren matches", "100")


def test_any_one_include_is_enough() -> None:
    assert judge(entry(), feed(rule(include=("nomatch", "FRIEREN")))).grab


def test_a_title_matching_no_include_is_rejected_with_the_rule_named() -> None:
    verdict = judge(entry(), feed(rule(include=("Dandadan",))))
    assert verdict == Verdict(False, None, "rule frieren: title does not match any include", None)


def test_an_exclude_match_rejects_and_names_the_regex() -> None:
    verdict = judge(entry("[G] Frieren - 07 [1080p HEVC]"), feed(rule(include=("frieren",), exclude=("hevc",))))
    assert not verdict.grab
    assert verdict.reason == "rule frieren: title matches exclude 'hevc'"


def test_a_rule_without_include_accepts_every_title_its_other_filters_pass() -> None:
    assert judge(entry("anything at all"), feed(rule(exclude=("x265",)))).grab


# -- sizes ------------------------------------------------------------------------------------------------------


def test_size_above_max_size_is_rejected_in_decimal_units() -> None:
    verdict = judge(entry(size=9_100_000_000), feed(rule(max_size=8 * GB)))
    assert verdict.reason == "rule frieren: size 9.1 GB above max_size 8 GB"


def test_size_below_min_size_is_rejected() -> None:
    verdict = judge(entry(size=50_000_000), feed(rule(min_size=100_000_000)))
    assert verdict.reason == "rule frieren: size 50 MB below min_size 100 MB"


def test_sizes_on_the_limits_pass() -> None:
    assert judge(entry(size=8 * GB), feed(rule(min_size=8 * GB, max_size=8 * GB))).grab


def test_unknown_size_passes_size_limits_unless_require_size() -> None:
    assert judge(entry(size=None), feed(rule(min_size=1, max_size=2))).grab
    verdict = judge(entry(size=None), feed(rule(require_size=True)))
    assert verdict.reason == "rule frieren: size unknown and require_size is set"


def test_require_size_accepts_an_entry_whose_size_is_known() -> None:
    assert judge(entry(size=GIB), feed(rule(require_size=True, max_size=2 * GIB))).grab


# -- age and seeders --------------------------------------------------------------------------------------------


def test_max_age_rejects_older_entries_and_says_how_old() -> None:
    verdict = judge(entry(published=NOW - 3.2 * 86400), feed(rule(max_age=2 * 86400.0)))
    assert verdict.reason == "rule frieren: published 3.2d ago, older than max_age 2d"


def test_max_age_passes_younger_and_undated_entries() -> None:
    assert judge(entry(published=NOW - 3600), feed(rule(max_age=7200.0))).grab
    assert judge(entry(published=None), feed(rule(max_age=7200.0))).grab


def test_min_seeders_rejects_fewer_and_passes_unknown() -> None:
    verdict = judge(entry(seeders=3), feed(rule(min_seeders=5)))
    assert verdict.reason == "rule frieren: 3 seeders, below min_seeders 5"
    assert judge(entry(seeders=5), feed(rule(min_seeders=5))).grab
    assert judge(entry(seeders=None), feed(rule(min_seeders=5))).grab


# -- order, targets, accept_all ---------------------------------------------------------------------------------


def test_the_first_matching_rule_wins_and_brings_its_target() -> None:
    rules = (rule("dandadan", include=("dandadan",), target="1"), rule("hd", include=("1080p",), target="2"),
             rule("any", include=("frieren",), target="3"))
    assert judge(entry(), feed(*rules)) == Verdict(True, "hd", "rule hd matches", "2")


def test_a_rule_without_target_uses_the_feeds_target() -> None:
    assert judge(entry(), feed(rule(include=("frieren",)), target="/Anime")).target == "/Anime"


def test_when_no_rule_matches_every_rules_reason_is_given_in_order() -> None:
    rules = (rule("a", include=("dandadan",)), rule("b", include=("frieren",), exclude=("1080p",)))
    verdict = judge(entry(), feed(*rules))
    assert verdict.reason == "rule a: title does not match any include; rule b: title matches exclude '1080p'"


def test_accept_all_grabs_what_no_rule_took_with_the_feeds_target() -> None:
    verdict = judge(entry(), feed(rule("a", include=("dandadan",), target="9"), accept_all=True, target="5"))
    assert verdict == Verdict(True, None, "accept_all: true", "5")


def test_accept_all_leaves_matching_rules_their_name_and_target() -> None:
    verdict = judge(entry(), feed(rule("a", include=("frieren",), target="9"), accept_all=True))
    assert (verdict.rule, verdict.target) == ("a", "9")


def test_a_feed_without_rules_or_accept_all_grabs_nothing() -> None:
    verdict = judge(entry(), feed())
    assert verdict == Verdict(False, None, "the feed has no rules and no accept_all: true", None)


def test_an_entry_without_a_download_link_is_never_grabbed() -> None:
    assert judge(entry(link=None), feed(accept_all=True)).reason == "the entry has no download link"


# -- episodes ---------------------------------------------------------------------------------------------------


def test_an_episodes_rule_grabs_the_first_release_and_names_the_episode() -> None:
    verdict = judge(entry(), feed(rule(include=("frieren",), episodes=True)))
    assert verdict.grab and verdict.episode == EpisodeKey("sousou no frieren", 1, 7)


def test_an_episodes_rule_skips_an_episode_already_grabbed() -> None:
    grabbed = {EpisodeKey("sousou no frieren", 1, 7)}
    verdict = judge(entry("[Erai-raws] Sousou no Frieren - 07 [720p]"), feed(rule(episodes=True)),
                    lambda key: key in grabbed)
    assert verdict.reason == "rule frieren: S01E07 of 'sousou no frieren' was already grabbed"


def test_a_repack_is_skipped_without_allow_repack() -> None:
    grabbed = {EpisodeKey("sousou no frieren", 1, 7)}
    verdict = judge(entry("[SubsPlease] Sousou no Frieren - 07v2 (1080p)"), feed(rule(episodes=True)),
                    lambda key: key.base() in grabbed and key.version == 1)
    assert not verdict.grab
    assert verdict.reason.endswith("was already grabbed (this is a repack; allow_repack is not set)")


def test_allow_repack_lets_a_later_version_through_once() -> None:
    versions = {("sousou no frieren", 1, 7): 1}

    def seen(key: EpisodeKey) -> bool:
        return versions.get((key.show, key.season, key.episode), 0) >= key.version

    repack = entry("[SubsPlease] Sousou no Frieren - 07v2 (1080p)")
    allowed = feed(rule(episodes=True, allow_repack=True))
    first = judge(repack, allowed, seen)
    assert first.grab and first.episode == EpisodeKey("sousou no frieren", 1, 7, 2)
    versions[("sousou no frieren", 1, 7)] = 2
    again = judge(entry("[Other] Sousou no Frieren - 07v2"), allowed, seen)
    assert again.reason == ("rule frieren: S01E07v2 of 'sousou no frieren': this version (or a later one) "
                            "was already grabbed")


def test_a_title_without_an_episode_is_judged_by_the_other_filters_alone() -> None:
    verdict = judge(entry("[LoliHouse] Chiikawa [001-120 合集][WebRip 1080p]"), feed(rule(episodes=True)),
                    lambda key: True)
    assert verdict.grab and verdict.episode is None


def test_the_episode_memory_is_not_consulted_when_an_earlier_filter_rejects() -> None:
    asked: list[EpisodeKey] = []

    def seen(key: EpisodeKey) -> bool:
        asked.append(key)
        return False

    judge(entry(), feed(rule(include=("dandadan",), episodes=True)), seen)
    assert asked == []


def test_a_rule_without_episodes_ignores_the_episode_memory() -> None:
    verdict = judge(entry(), feed(rule(include=("frieren",))), lambda key: True)
    assert verdict.grab and verdict.episode is None


# -- formatting -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "text"), [
    (512, "512 B"), (1_000, "1 KB"), (316_477_946, "316.48 MB"), (8 * GB, "8 GB"), (9_100_000_000, "9.1 GB"),
    (1_610_612_736, "1.61 GB"), (25_000_000_000_000, "25 TB"), (4_000_000_000_000_000, "4000 TB"),
])
def test_format_size_uses_decimal_units(size: int, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize(("seconds", "text"), [
    (30, "30s"), (600, "10m"), (6 * 3600, "6h"), (2 * 86400, "2d"), (3.25 * 86400, "3.2d"), (90, "1.5m"),
])
def test_format_duration_uses_the_configs_units(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@settings(max_examples=150, deadline=None)
@given(title=st.text(max_size=80), size=st.none() | st.integers(0, 10**13),
       seeders=st.none() | st.integers(0, 10**6), age=st.none() | st.floats(-1e6, 1e9))
def test_every_verdict_either_grabs_with_a_target_or_says_why_not(title: str, size: int | None,
                                                                  seeders: int | None, age: float | None) -> None:
    f = feed(rule("a", include=("frieren",), max_size=8 * GB, min_seeders=5),
             rule("b", exclude=("x265",), max_age=86400.0, require_size=True, episodes=True))
    e = entry(title, size=size, seeders=seeders, published=None if age is None else NOW - age)
    verdict = judge(e, f)
    if verdict.grab:
        assert verdict.rule in ("a", "b") and verdict.target == "100"
    else:
        assert verdict.rule is None and verdict.reason.startswith("rule a: ") and "; rule b: " in verdict.reason
