"""Episode numbers read from release titles: every form the issue names, and what is not an episode."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon115.sources.episodes import EpisodeKey, parse_episode


@pytest.mark.parametrize(("title", "show", "season", "episode"), [
    ("Legion S01E02 720p HDTV x264-AVS[PRiME]", "legion", 1, 2),
    ("Criminal.Minds.S12E13.720p.HDTV.x264-FLEET", "criminal minds", 12, 13),
    ("Snatch s02e07", "snatch", 2, 7),
    ("The Expanse 2x04 (720p-HDTV-x264-SVA)[VTV]", "the expanse", 2, 4),
    ("The Voice 8x25", "the voice", 8, 25),
    ("Andy McNabs Tour Of Duty 1x6 [DVDRIP - MVGROUP]", "andy mcnabs tour of duty", 1, 6),
    ("[Skymoon-Raws] Enter the Garden - 02 [ViuTV][WEB-DL][1080p][AVC AAC]", "enter the garden", 1, 2),
    ("[Arabasma.com] Naruto Shippuuden - 372 [Arabic Sub] [MQ].mp4", "naruto shippuuden", 1, 372),
    ("[SubsPlease] One Piece - 1100 (1080p) [ABCDEF01].mkv", "one piece", 1, 1100),
    ("[Group][Frieren][07][1080p]", "frieren", 1, 7),
    ("[Group] Frieren [07][1080p]", "frieren", 1, 7),
    ("[JIGGYSUB] KOI KOI 7 EP07 [R2DVD 420P H264 AC3]", "koi koi 7", 1, 7),
    ("Frieren Ep 7 1080p", "frieren", 1, 7),
    ("[X] 葬送的芙莉莲 第07集 1080p", "葬送的芙莉莲", 1, 7),
    ("【喵萌奶茶屋】★04月新番★[葬送的芙莉莲][第07话][1080p]", "葬送的芙莉莲", 1, 7),
    ("[Y] 葬送的芙莉蓮 第7話 [1080p]", "葬送的芙莉蓮", 1, 7),
    ("[TSRaws] Futsuu no Joshikousei ga Yattemita. #07 (TBS).ts", "futsuu no joshikousei ga yattemita", 1, 7),
])
def test_each_title_form_gives_show_season_and_episode(title: str, show: str, season: int, episode: int) -> None:
    assert parse_episode(title) == EpisodeKey(show, season, episode)


@pytest.mark.parametrize(("title", "season"), [
    ("[喵萌奶茶屋&LoliHouse] 测不准的阿波连同学 第二季 / Aharen-san wa Hakarenai S2 - 08 [WebRip 1080p]", 2),
    ("[G] Mushoku Tensei Season 2 - 05 [1080p]", 2),
    ("[G] Oshi no Ko 3rd Season - 01 [1080p]", 3),
    ("[G] 某科学的超电磁炮 第三季 - 04", 3),
])
def test_anime_numbering_takes_the_season_from_the_show_name(title: str, season: int) -> None:
    key = parse_episode(title)
    assert key is not None and key.season == season


def test_the_same_episode_from_different_groups_and_forms_has_one_key() -> None:
    keys = {parse_episode(t).base() for t in (  # type: ignore[union-attr]
        "[SubsPlease] Sousou no Frieren - 07 (1080p) [A1B2C3D4].mkv",
        "[Erai-raws] Sousou no Frieren - 07 [720p][Multiple Subtitle]",
        "Sousou.no.Frieren.S01E07.1080p.WEB.H264",
        "[LoliHouse] 葬送的芙莉莲 / Sousou no Frieren - 07 [WebRip 1080p HEVC-10bit AAC]",
        "[Nekomoe] Sousou no Frieren [07][1080p]",
        "Sousou no Frieren EP07 1080p",
    )}
    assert keys == {EpisodeKey("sousou no frieren", 1, 7)}


def test_only_the_last_alias_of_a_multilingual_name_is_kept() -> None:
    key = parse_episode("[喵萌奶茶屋&LoliHouse] 直至魔女消逝 / 直到某魔女死去 / Aru Majo ga Shinu Made - 09 [WebRip]")
    assert key == EpisodeKey("aru majo ga shinu made", 1, 9)


@pytest.mark.parametrize(("title", "version"), [
    ("[Group] Frieren - 07v2 [1080p]", 2),
    ("[Group] Frieren [07v3][1080p]", 3),
    ("Show.Name.S03E04.PROPER.720p.HDTV", 2),
    ("Show Name S03E04 REPACK 1080p", 2),
    ("[Sub] Frieren - 07 [1080p] [v2]", 2),
    ("[Sub] Frieren - 07 [1080p]", 1),
])
def test_propers_repacks_and_vN_raise_the_version(title: str, version: int) -> None:
    key = parse_episode(title)
    assert key is not None and key.version == version and key.is_repack == (version > 1)


@pytest.mark.parametrize("title", [
    "Macross Zero (BDRip 1920x1080p x265 HEVC TrueHD, FLAC 5.1+2.0)[sxales]",
    "[MingY] Lycoris Recoil - Friends are thieves of time. [01-06][WebRip][1080p]",
    "[LoliHouse] 吉伊卡哇 / Chiikawa [001-120 合集][WebRip 1080p HEVC-10bit AAC][无字幕]",
    "Movie Title - 2014 [1080p]",
    "Ocean Giants 2013 1080p 3D BluRay Remux MVC DTS-HD MA 5.1-HDAccess",
    "[Doki] PriPara 50 (848x480 h264 AAC) [6F0B49FD] mkv",
    "",
])
def test_batches_movies_resolutions_and_checksums_are_not_episodes(title: str) -> None:
    assert parse_episode(title) is None


def test_label_and_base_drop_or_show_the_version() -> None:
    key = EpisodeKey("frieren", 1, 7, 2)
    assert key.label == "S01E07v2"
    assert key.base() == EpisodeKey("frieren", 1, 7)
    assert key.base().label == "S01E07"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120))
def test_any_text_gives_an_episode_or_none_without_crashing(title: str) -> None:
    key = parse_episode(title)
    assert key is None or (key.show and key.episode >= 0 and key.season >= 0 and key.version >= 1)
