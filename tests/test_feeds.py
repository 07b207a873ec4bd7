"""Feeds over real HTTP on loopback: every real-world fixture extracted entry by entry, conditional GET, backoff,
hostile feeds beside healthy ones, episodes across feeds, link resolution, and `rss test` writing nothing."""

from __future__ import annotations

import calendar
import email.utils
import gzip
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon115.config import Feed, Regex, Rule
from daemon115.ledger import Ledger
from daemon115.sources import feeds as feeds_module
from daemon115.sources.feed_entries import parse_feed, read_feed
from daemon115.sources.feeds import FeedError, FeedPoller, PollResult, rss_test_rows

REAL_WORLD = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real-world"
FEEDS = REAL_WORLD / "feeds"
TORRENTS = REAL_WORLD / "torrents"
GIB, MIB = 1024**3, 1024**2


# ================================================================ a loopback HTTP server


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    at: float


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    stream: Iterable[bytes] | None = None  # sent without Content-Length, connection closed at the end


Route = Reply | Callable[[Request], Reply]


class LoopbackServer:
    """http.server on 127.0.0.1, port 0; routes by path (query ignored); every request is logged."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[Request] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                request = Request(self.path, {k.lower(): v for k, v in self.headers.items()}, time.monotonic())
                owner.requests.append(request)
                route = owner.routes.get(self.path.split("?", 1)[0])
                reply = route(request) if callable(route) else route or Reply(404, b"not found")
                if reply.delay:
                    time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    if reply.stream is None:
                        self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    if reply.stream is None:
                        self.wfile.write(reply.body)
                    else:
                        for chunk in reply.stream:
                            self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def hits(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path.split("?", 1)[0] == path]

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def static(body: bytes, *, etag: str | None = None, last_modified: str | None = None,
           headers: dict[str, str] | None = None) -> Callable[[Request], Reply]:
    """A document that answers conditional GETs the way a real server does."""
    def reply(request: Request) -> Reply:
        if etag and request.headers.get("if-none-match") == etag:
            return Reply(304)
        if last_modified and request.headers.get("if-modified-since") == last_modified:
            return Reply(304)
        extra = dict(headers or {})
        if etag:
            extra["ETag"] = etag
        if last_modified:
            extra["Last-Modified"] = last_modified
        return Reply(200, body, {"Content-Type": "application/rss+xml", **extra})
    return reply


class LogRecorder:
    """The poller's log sink, kept in memory so tests can read what was logged."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def _add(self, level: str, event: str, **fields: Any) -> None:
        self.lines.append((level, event, fields))

    def debug(self, event: str, **fields: Any) -> None:
        self._add("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self._add("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._add("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self._add("error", event, **fields)

    def text(self) -> str:
        return repr(self.lines)


class Clock:
    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as running:
        yield running


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(tmp_path / "ledger.sqlite3", synchronous="NORMAL") as opened:
        yield opened


def make_feed(name: str, url: str, *rules: Rule, **options: Any) -> Feed:
    return Feed(name=name, url=url, rules=rules, timeout=options.pop("timeout", 5.0), **options)


def rule(name: str, *include: str, **options: Any) -> Rule:
    return Rule(name=name, include=tuple(map(Regex.compile, include)), **options)


def poller(feeds: Iterable[Feed], ledger: Ledger, **options: Any) -> FeedPoller:
    options.setdefault("host_gap", 0.0)
    options.setdefault("log", LogRecorder())
    return FeedPoller(list(feeds), ledger, **options)


def rss(*items: str, extra_ns: str = "") -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"{extra_ns}><channel><title>t</title>'
            + "".join(items) + "</channel></rss>").encode()


def item(title: str, n: int, *, guid: str | None = None, published: str | None = None) -> str:
    date = f"<pubDate>{published}</pubDate>" if published else ""
    return (f"<item><title>{title}</title><guid>{guid or f'id-{n}'}</guid>{date}"
            f"<link>magnet:?xt=urn:btih:{n:040x}&amp;dn=x</link></item>")


def h(n: int) -> str:
    return f"{n:040x}"


# ================================================================ every real-world fixture


@dataclass(frozen=True)
class Want:
    title: str
    link: str | None  # "magnet" means: the canonical magnet of info_hash
    info_hash: str | None
    size: int | None
    seeders: int | None = None
    torrent_url: str | None = None


@dataclass(frozen=True)
class Fails:
    message: str


def magnet_of(info_hash: str) -> str:
    return "magnet"


ANIMETOSHO = "http://storage.animetosho.org/torrents/"
DOKI = "http://tracker.anime-index.org/download.php?id="
LIME = "http://itorrents.org/torrent/"
HDA = "https://hdaccess.net/download.php?torrent={}&passkey=123456"
MTV = "https://www.morethantv.me/torrents.php?action=download&id=(removed)&authkey=(removed)&torrent_pass=(removed)"
PROWLARR = "http://localhost:9696/2/download?apikey=redacted&link=xxx&file="
MIKAN = "https://mikanani.me/Download/"

EXPECTED: dict[str, list[Want] | Fails] = {
    "animetosho_rss_multi_enclosure.sonarr.xml": [
        Want("[FFF] Ore Monogatari!! - Vol.01 [BD][720p-AAC]",
             ANIMETOSHO + "85a570f25067f69b3c83b901ce6c00c491345288/%5BFFF%5D%20Ore%20Monogatari%21%21%20-%20Vol.01%20"
             "%5BBD%5D%5B720p-AAC%5D.torrent", "85a570f25067f69b3c83b901ce6c00c491345288", round(1.366 * GIB)),
        Want("DAYS - 05 (1280x720 HEVC2 AAC).mkv",  # the .torrent enclosure comes after the .nzb one here
             ANIMETOSHO + "4b58360143d59a55cbd922397a3eaa378165f3ff/DAYS%20-%2005%20%281280x720%20HEVC2%20AAC%29"
             ".torrent", "4b58360143d59a55cbd922397a3eaa378165f3ff", round(158.1 * MIB)),
    ],
    "doki_iso8859-1.sonarr.xml": [  # enclosure length 15360 is the .torrent's own size; the id is not trusted
        Want("[Doki] PriPara 50 (848x480 h264 AAC) [6F0B49FD] mkv", DOKI + "82d8ad84403e01a7786130905ca169a3429e657f"
             "&f=%5BDoki%5D+PriPara+-+50+%28848x480+h264+AAC%29+%5B6F0B49FD%5D.mkv.torrent", None, None),
        Want("[Doki] PriPara 50 (1280x720 Hi10P AAC) [441163C4] mkv", DOKI + "8f7d8bf3d68bb03c88f3fb9b17fd07ca96265085"
             "&f=%5BDoki%5D+PriPara+-+50+%281280x720+Hi10P+AAC%29+%5B441163C4%5D.mkv.torrent", None, None),
        Want("[Doki] Hitoribocchi no OO Seikatsu Chapter 10 [52706FCC] zip", DOKI + "52b245c90ba00b9755c1b49eaad15da8c3"
             "9ae742&f=%5BDoki%5D+Hitoribocchi+no+OO+Seikatsu+-+Chapter+10+%5B52706FCC%5D.zip.torrent", None, None),
        Want("[Doki] PriPara 49 (1280x720 Hi10P AAC) [328C34F3] mkv", DOKI + "a376fbcd79a40f7ad11eb5af2951a33fb11b8394"
             "&f=%5BDoki%5D+PriPara+-+49+%281280x720+Hi10P+AAC%29+%5B328C34F3%5D.mkv.torrent", None, None),
        Want("[Doki] PriPara 44 (848x480 h264 AAC) [43DB504A] mkv", DOKI + "239196fdeb6427e9c11d69d2853642873481d855"
             "&f=%5BDoki%5D+PriPara+-+44+%28848x480+h264+AAC%29+%5B43DB504A%5D.mkv.torrent", None, None),
    ],
    "ezrss_torrent_ns_default.sonarr.xml": [
        Want("S4C I Grombil Cyfandir Pell American Interior [PDTV - MVGROUP]", "magnet",
             "20fc4fbfa88272274ac671f857cc15144e9aa83e", 796606175, torrent_url="http://re.zoink.it/20a4ed4eFC"),
        Want("Andy McNabs Tour Of Duty Series 1 - Courage Under Fire 1x6 [DVDRIP - MVGROUP]", "magnet",
             "aaa2038bed9ebca2c312d1c9c3e8e024d0eb414e", 698999946, torrent_url="http://re.zoink.it/AAa65f6eA2"),
        Want("So You Think You Can Drive [HDTV - MVGROUP]", "magnet", "54d50b8352b2c54a1a3ad952269a56d2d95a3df4",
             1163302273, torrent_url="http://re.zoink.it/54a65da3D5"),
    ],
    "eztv_magnet_cdata_link.sonarr.xml": [  # the enclosure's length="100000" is bogus, so the size is unknown
        Want("Andy McNabs Tour Of Duty Series 1 - Courage Under Fire 1x6 [DVDRIP - MVGROUP]", "magnet",
             "aaa2038bed9ebca2c312d1c9c3e8e024d0eb414e", None),
    ],
    "fp_encoding_euc-kr-item.xml": [Want("", None, None, None)],
    "fp_encoding_utf-16le-bom.xml": [],
    "fp_entities_query_variable_entry.xml": [Want("", "http://example/?a=1&b=2&c", None, None)],
    "fp_illformed_chardet_shiftjis.xml": [Want("DrecomRSSに記事投稿が反映されない…", None, None, None)],
    "fp_illformed_rss_incomplete_cdata.xml": Fails("invalid XML (line 6, column 0: XML or text declaration not at "
                                                   "start of entity) and no entries could be recovered"),
    "fp_illformed_rss_item_link_corrupted_ampersands.xml": [Want("", "http://link/get?a=1&b=2", None, None)],
    "fp_illformed_undeclared_namespace.xml": Fails("invalid XML (line 9, column 0: unbound prefix) and no entries "
                                                   "could be recovered"),
    "fp_wellformed_atom10_entry_link_rel_enclosure.xml": [Want("", "http://www.example.com/", None, None)],
    "fp_wellformed_base_http_item_link_base_docuri.xml": [Want("", "{server}/relative/uri", None, None)],
    "fp_wellformed_rss_item_enclosure_multiple.xml": [Want("", "http://example.com/", None, None)],
    "generic_rss_enclosures.flexget.xml": [
        Want("Zero sized enclosure", "http://localhost/enclosure", None, None,
             torrent_url="http://localhost/enclosure"),
        Want("Multiple enclosures", "http://localhost/multiple_enclosures", None, None),  # untyped: not torrents
        Want("Normal", "http://localhost/normal", None, None),
        Want("Messy enclosure", "http://localhost/messy_enclosure", None, None),  # an untyped .mp3
        Want("Guid link", "http://localhost/guid", None, None),
        Want("Other fields", "http://localhost/otherfields", None, None),
        Want("Colon fields", "http://localhost/otherfields", None, None),
        Want("Content", "http://localhost/content", None, None),
        Want("Multiple content items", "http://localhost/multi_content", None, None),
        Want("", "http://localhost/empty", None, None),
    ],
    "kickass_torrent_ns_prefixed.sonarr.xml": [
        Want("Doctor Stranger.E03.140512.HDTV.H264.720p-iPOP.avi [CTRG]", "magnet",
             "208c4f7866612cc88bfebc7c496fa72c2368d1c0", 1205364736, 206),
        Want("Triangle.E03.140512.HDTV.XViD-iPOP.avi [CTRG]", "magnet", "bf22a53c9889a7d325f2a3d904e566b7df4074eb",
             677543936, 242),
        Want("Triangle.E03.140512.HDTV.H264.720p-iPOP.avi [CTRG]", "magnet",
             "8427bfb8884b8228364ebb9b3ea7d8b77e03a7bc", 1196869632, 177),
        Want("Triangle.E03.140512.HDTV.X264.720p-BarosG_.avi [CTRG]", "magnet",
             "5556b773893db55287ecec581e850b853163db11", 1418906266, 522),
        Want("Battlestar Galactica 1978 Dvd3 e09 e10 e11 e12 [NL] [FR] [ENG] Sub", "magnet",
             "3d293cafedac595f6e55f9c284dd76862fe254f6", 4680841216, 2),
    ],
    "limetorrents_itorrents_url.sonarr.xml": [
        Want("The Expanse 2x04 (720p-HDTV-x264-SVA)[VTV]", LIME + "51C578C9823DD58F6EEA287C368ED935843D63AB.torrent"
             "?title=The-Expanse-2x04-(720p-HDTV-x264-SVA)[VTV]", "51c578c9823dd58f6eea287c368ed935843d63ab",
             880496711, 0),
        Want("Criminal Minds S12E13 720p HDTV x264-FLEET[PRiME]", LIME + "C7EBCBE53A82E7C8F0826417F5174C8709DB9DC0"
             ".torrent?title=Criminal-Minds-S12E13-720p-HDTV-x264-FLEET[PRiME]",
             "c7ebcbe53a82e7c8f0826417f5174c8709db9dc0", 940818158, 0),
        Want("Legion S01E02 720p HDTV x264-AVS[PRiME]", LIME + "ED2903DB3F4B3D728D2E7091C33B6F502A0FB5D4.torrent"
             "?title=Legion-S01E02-720p-HDTV-x264-AVS[PRiME]", "ed2903db3f4b3d728d2e7091c33b6f502a0fb5d4",
             1320654292, 0),
        Want("Suits S06E14 HDTV x264-SVA[PRiME]", LIME + "5E412B3200773684AEDBEBF9B053ED58180279DD.torrent"
             "?title=Suits-S06E14-HDTV-x264-SVA[PRiME]", "5e412b3200773684aedbebf9b053ed58180279dd", 212274667, 0),
        Want("The Expanse S02E04 HDTV x264-SVA[PRiME]", LIME + "7E552CD2D99E43C34FBB233E3BAF0C1ECD416C76.torrent"
             "?title=The-Expanse-S02E04-HDTV-x264-SVA[PRiME]", "7e552cd2d99e43c34fbb233e3baf0c1ecd416c76",
             269445781, 0),
    ],
    "mikan_bangumi_3288_370.konobangu.xml": [
        Want("[LoliHouse] 吉伊卡哇 / Chiikawa [001-120 合集][WebRip 1080p HEVC-10bit AAC][无字幕]",
             MIKAN + "20240809/e22d1c0062f2a4f4c49aebfb8d84fb4d85a7c375.torrent",
             "e22d1c0062f2a4f4c49aebfb8d84fb4d85a7c375", 4294967296),
    ],
    "mikan_bangumi_3515_575.konobangu.xml": [
        Want("[DBD-Raws][4K_HDR][数分间的激励/Suufunkan no Yell o][2160P][UHDBDRip][HEVC-10bit][简繁外挂][FLAC][MKV]"
             "(数分间のエールを)", MIKAN + "20250407/fda86b4654b574a46c8d4c8db8138d661e1ff391.torrent",
             "fda86b4654b574a46c8d4c8db8138d661e1ff391", 4617090048),
        Want("[DBD-Raws][数分间的激励/Suufunkan no Yell o][正片+特典映像][1080P][BDRip][HEVC-10bit][简繁外挂][FLAC+AC3]"
             "[MKV](数分间のエールを)", MIKAN + "20250407/b8abe4d885056acc88d650632f80443595558d23.torrent",
             "b8abe4d885056acc88d650632f80443595558d23", 6335076864),
    ],
    "mikan_bangumi_3633_534.konobangu.xml": [
        Want("[Skymoon-Raws] Enter the Garden - 02 [ViuTV][WEB-DL][1080p][AVC AAC]",
             MIKAN + "20250403/45e14c26b0a78b1b3bdbc3dd2763a1242ee420b4.torrent",
             "45e14c26b0a78b1b3bdbc3dd2763a1242ee420b4", 244318208),
        Want("[Skymoon-Raws] Enter the Garden - 01 [ViuTV][WEB-DL][1080p][AVC AAC]",
             MIKAN + "20250403/58ab31bec4f710fd75816b590728bf0af1bdf1ca.torrent",
             "58ab31bec4f710fd75816b590728bf0af1bdf1ca", 200907168),
    ],
    "mikan_mybangumi.konobangu.xml": [],  # 37 items: checked against the raw file in its own test below
    "nyaa_se_2014.sonarr.xml": [
        Want("[TSRaws] Futsuu no Joshikousei ga [Locodol] Yattemita. #07 (TBS).ts",
             "https://www.nyaa.se/?page=download&tid=587750", None, round(2.35 * GIB), 1,
             torrent_url="https://www.nyaa.se/?page=download&tid=587750"),
        Want("[JIGGYSUB] KOI KOI 7 EP07 [R2DVD 420P H264 AC3]", "https://www.nyaa.se/?page=download&tid=587749", None,
             round(1.36 * GIB), 1, torrent_url="https://www.nyaa.se/?page=download&tid=587749"),
        Want("[Ohys-Raws] RAIL WARS! - 07 (TBS 1280x720 x264 AAC).mp4", "https://www.nyaa.se/?page=download&tid=587748",
             None, round(424.2 * MIB), 2, torrent_url="https://www.nyaa.se/?page=download&tid=587748"),
        Want("[Arabasma.com] Naruto Shippuuden - 372 [Arabic Sub] [MQ].mp4",
             "https://www.nyaa.se/?page=download&tid=587747", None, round(69.5 * MIB), 1,
             torrent_url="https://www.nyaa.se/?page=download&tid=587747"),
    ],
    "nyaa_si_2021.sonarr.xml": [
        Want("[Foxy-Subs] Mahouka Koukou no Yuutousei - 08 [720p] [3194D881].mkv",
             "https://nyaa.si/download/1424896.torrent", "e8ca5e20eca876339f41c3d9e95ea66c1d7caaee",
             round(609.6 * MIB), 4),
        Want("Macross Zero (BDRip 1920x1080p x265 HEVC TrueHD, FLAC 5.1+2.0)[sxales]",
             "https://nyaa.si/download/1424895.torrent", "26f37f26d5b3475b41a98dc575fabfa6f8d32a76",
             round(5.7 * GIB), 23),
        Want("Fumetsu no Anata e - 19 [WEBDL 1080p] Ukr DVO", "https://nyaa.si/download/1424887.torrent",
             "3e4300e24b39983802162877755aab4380bd137a", round(1.4 * GIB), 5),
    ],
    "showrss_info.sonarr.xml": [
        Want("The Voice 8x25", "magnet", "96cd620beda3efd7c4d7746ef94549d03a2eb13b", None),
        Want("The Voice 8x26", "magnet", "9171902e28b8307f336affa8b7460a24b6d262f4", None),
        Want("How It's Made 25x07 720p", "magnet", "cc48d14c6b0db35a2286bcfd2029311343721208", None),
        Want("Major Lazer 1x05 720p", "magnet", "501cfea851601815a8eed051924ddf80a952d6fa", None),
        Want("Lip Sync Battle 1x08 720p", "magnet", "83ad17789674a470fdf71f9d7e590fe4478e95fb", None),
    ],
    "torrentday_minimal_link_only.sonarr.xml": [
        Want("Surviving Marriage S01E09 480p HDTV x264-mSD", "https://www.torrentday.com/download.php/123/"
             "Surviving.Marriage.S01E09.480p.HDTV.x264-mSD.torrent?torrent_pass=abc", None, None),
    ],
    "torznab_animetosho_conflicting_hash.sonarr.xml": [  # the magneturl's btih wins over the infohash attr
        Want("[finFAGs]_Frame_Arms_Girl_07_(1280x720_TV_AAC)_[1262B6F7].mkv", "magnet",
             "ad350c37deb53e59bef236e651c6f6f2a640bc25", 316477946,
             torrent_url="http://storage.localhost/torrents/123451.torrent"),
        Want("[HorribleSubs] Frame Arms Girl - 07 [720p].mkv", "magnet", "ec15ffa57f5e6a8610ca4f6b503191e90906324d",
             473987489, torrent_url="http://storage.localhost/torrents/123452.torrent"),
    ],
    "torznab_hdaccess_http.sonarr.xml": [
        Want("Better Call Saul S01E05 Alpine Shepherd 1080p NF WEBRip DD5.1 x264", HDA.format(11515),
             "63e07ff523710ca268567dad344ce1e0e6b7e8a3", 2538463390, 7),
        Want("Ocean Giants 2013 1080p 3D BluRay Remux MVC DTS-HD MA 5.1-HDAccess", HDA.format(11511),
             "ec039a525a6feac4b15889323f4f443de381e7cc", 15330508800, 41),
        Want("Wild 2014 720p BluRay DTS x264-HDAccess", HDA.format(11506), "6704c29a00304f01b7dbb7959bfea5ccefe7d7d5",
             6501510357, 57),
        Want("Absolute Power 1997.1080p BluRay Remux AVC DTS-HD MA 5.1-HDX", HDA.format(11504),
             "668c1fed4b6bad43b1c84656da30d5f4eb58afdb", 25267070253, 6),
        Want("12 Monkeys S01E09 Tomorrow 720p WEB-DL DD5.1 H.264-BS", HDA.format(11501),
             "9fbf7d6d52eb9847700591dad758988fb0799c53", 1397243303, 6),
    ],
    "torznab_jackett_tpb_magnet.sonarr.xml": [
        Want("Series Title S05E02 HDTV x264-Xclusive [eztv]", "magnet", "9fb267cff5ae5603f07a347676ec3bf3e35f75e1",
             388895872, 34128),
        Want("Series Title S05E03 WEBRip XviD-FUM[ettv]", "magnet", "c1f9f6bade11a4c46028b118053452460ab94be1",
             471722880, 28706),
        Want("Series Title S05E01 HDTV x264-Xclusive", "magnet", "fd8b1062af0d8c2426cb4d180b86815ffa91b479",
             312339328, 26637),
        Want("Series Title S05E04 WEBRip XviD-FUM[ettv]", "magnet", "30abe6b5816c758d327672a0fa58ff2b055ad3fe",
             442970944, 21551),
        Want("Series.Title.S03E19.HDTV.x264-LOL[ettv]", "magnet", "53896c2a6391a69a672041139e023c018c0f4aff",
             243951200, 15754),
    ],
    "torznab_morethantv_removed_hash.prowlarr.xml": [  # infohash "(removed)" is not a hash
        Want("Out of the Past 1947 720p BluRay FLAC2.0 x264-CtrlHD.mkv", MTV, None, 5412993028, 3),
        Want("Out of the Past 1947 1080p USA Blu-ray AVC DTS-HD MA 2.0-PCH", MTV, None, 30524085127, 1),
    ],
    "torznab_prowlarr_duplicate_item.autobrr.xml": [
        Want("TRON Legacy Extras 720p BluRay x264-CtrlHD", PROWLARR + "TRON+Legacy+Extras+720p+BluRay+x264-CtrlHD",
             None, 2139365375, 7),
        Want("Tron.Legacy.RETAIL.BDRip.XviD-DEFACED", PROWLARR + "Tron.Legacy.RETAIL.BDRip.XviD-DEFACED", None,
             1465321472, 6),
        Want("Tron.Legacy.RETAIL.BDRip.XviD-DEFACED", PROWLARR + "Tron.Legacy.RETAIL.BDRip.XviD-DEFACED", None,
             1465321472, 6),
    ],
    "unescaped_ampersands.flexget.xml": [  # the values FlexGet's tests state for this capture
        Want("Snatch", "http://wrong&url2", None, None),
        Want("Snatch &2", "http://some/url", None, None),
        Want("Snatch &4", "http://correct&url3", None, None),
        Want("Snatch &5", "http://correct&url4", None, None),
        Want("Cyrillic &тест", "http://correct&url5", None, None),
    ],
}


def test_every_feed_fixture_has_expectations() -> None:
    assert sorted(p.name for p in FEEDS.iterdir()) == sorted(EXPECTED)


def fetch_fixture(server: LoopbackServer, ledger: Ledger, name: str) -> PollResult:
    """Serve a fixture byte for byte and read it with `rss test`'s poller (a feed without rules grabs nothing,
    so no link is resolved over the network)."""
    server.routes[f"/{name}"] = static((FEEDS / name).read_bytes())
    feed = make_feed("fixture", server.url(f"/{name}"))
    return poller([feed], ledger, record=False).poll(feed)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_fixture_is_extracted_entry_by_entry(server: LoopbackServer, ledger: Ledger, name: str) -> None:
    result = fetch_fixture(server, ledger, name)
    expected = EXPECTED[name]
    if isinstance(expected, Fails):
        assert (result.status, result.error, result.entries) == ("error", expected.message, ())
        return
    assert result.status == "ok", result.error
    if name == "mikan_mybangumi.konobangu.xml":
        assert len(result.entries) == 37
        return
    assert len(result.entries) == len(expected)
    for got, want in zip(result.entries, expected, strict=True):
        link = want.link.format(server=server.url("")) if want.link else None
        assert got.title == want.title
        assert got.info_hash == want.info_hash
        assert got.size == want.size
        if link == "magnet":
            assert got.magnet is not None and got.link == got.magnet
            assert got.link.startswith(f"magnet:?xt=urn:btih:{want.info_hash}")
        else:
            assert (got.link, got.magnet) == (link, None)
        if want.seeders is not None:
            assert got.seeders == want.seeders
        if want.torrent_url is not None:
            assert got.torrent_url == want.torrent_url
        assert got.feed == "fixture"


def test_the_37_mikan_subscription_items_match_their_enclosures(server: LoopbackServer, ledger: Ledger) -> None:
    raw = (FEEDS / "mikan_mybangumi.konobangu.xml").read_text("utf-8")
    enclosures = re.findall(r'length="(\d+)"\s+url="(https://mikanani.me/Download/\d+/([0-9a-f]{40})\.torrent)"', raw)
    result = fetch_fixture(server, ledger, "mikan_mybangumi.konobangu.xml")
    assert len(enclosures) == 37
    assert [(e.size, e.link, e.info_hash) for e in result.entries] == [(int(n), u, x) for n, u, x in enclosures]
    first = result.entries[0]
    assert first.title == ("[LoliHouse] 天才治疗师退队作为无照治疗师快乐过活 / Yami Healer - 09 [WebRip 1080p "
                           "HEVC-10bit AAC][简繁内封字幕]")  # the wrapped title, its newline and indent folded
    assert first.published == calendar.timegm((2025, 5, 30, 6, 33, 42))
    assert all("\n" not in e.title and "  " not in e.title for e in result.entries)


def test_publication_times_come_from_pubdate_in_utc(server: LoopbackServer, ledger: Ledger) -> None:
    generic = fetch_fixture(server, ledger, "generic_rss_enclosures.flexget.xml")
    assert generic.entries[0].published == calendar.timegm((2008, 12, 28, 16, 0, 0))  # 14:00 -0200
    tosho = fetch_fixture(server, ledger, "animetosho_rss_multi_enclosure.sonarr.xml")
    assert tosho.entries[0].published == calendar.timegm((2016, 8, 2, 13, 48, 4))


@pytest.mark.parametrize("name", sorted(n for n, want in EXPECTED.items() if not isinstance(want, Fails)))
def test_elementtree_and_feedparser_read_every_fixture_alike(name: str) -> None:
    body = (FEEDS / name).read_bytes()
    fast = read_feed(body, feed="f", url="http://127.0.0.1/feed")
    lenient = read_feed(body, feed="f", url="http://127.0.0.1/feed", reader="feedparser")
    assert fast == lenient


# ================================================================ safety


LAUGHS = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
          + "".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">'
                    for i in range(1, 10))
          + ']><rss version="2.0"><channel><item><title>&lol9;</title>'
          '<link>magnet:?xt=urn:btih:' + "1" * 40 + '</link></item></channel></rss>').encode()
XXE = (b'<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
       b'<rss version="2.0"><channel><item><title>&xxe;</title><link>magnet:?xt=urn:btih:' + b"2" * 40
       + b"</link></item></channel></rss>")
HTML = (b"<!DOCTYPE html>\n<html><head><title>Login</title></head><body><form action=/login>"
        b"<input name=passkey></form></body></html>")
BAD_UTF8 = rss("<item><title>broken \xff\xfe title</title><link>magnet:?xt=urn:btih:" + "3" * 40 + "</link></item>")
BAD_UTF8 = BAD_UTF8.replace("\xff\xfe".encode(), b"\xff\xfe")
TRUNCATED = b'<?xml version="1.0"?><rss version="2.0"><channel><title>x</title><item><title>Show - 0'


def test_a_doctype_with_entities_is_refused_before_parsing() -> None:
    for body in (LAUGHS, XXE, b"<!-- <a> -->" + XXE[21:], b"junk first " + LAUGHS[21:], XXE.lower()):
        with pytest.raises(FeedError, match="declares XML entities in its DOCTYPE"):
            parse_feed(body, feed="x", url="http://x/")


def test_invalid_utf8_names_the_byte() -> None:
    with pytest.raises(FeedError) as caught:
        parse_feed(BAD_UTF8, feed="x", url="http://x/")
    offset = BAD_UTF8.index(b"\xff")
    assert str(caught.value) == (f"the body is not valid utf-8 (as its XML declaration says): invalid start byte "
                                 f"at byte {offset}")


def hostile_routes(server: LoopbackServer) -> list[Feed]:
    bomb = gzip.compress(b" " * 50_000_000, compresslevel=9)
    server.routes.update({
        "/good-a": static(rss(item("Good A", 1))),
        "/laughs": static(LAUGHS),
        "/xxe": static(XXE),
        "/bomb": static(bomb, headers={"Content-Encoding": "gzip"}),
        "/html": Reply(200, HTML, {"Content-Type": "text/html"}),
        "/utf8": static(BAD_UTF8),
        "/truncated": static(TRUNCATED),
        "/oversize": Reply(200, stream=(b"<rss>" + b" " * 65536 for _ in range(40))),
        "/declared-oversize": Reply(200, b" " * 1_500_000),
        "/good-b": static(rss(item("Good B", 2))),
    })
    return [make_feed(path.strip("/"), server.url(path), accept_all=True, max_size=1_000_000)
            for path in ("/good-a", "/laughs", "/xxe", "/bomb", "/html", "/utf8", "/truncated", "/oversize",
                         "/declared-oversize", "/good-b")]


def test_hostile_feeds_fail_alone_while_the_others_in_the_pass_work(server: LoopbackServer, ledger: Ledger) -> None:
    feeds = hostile_routes(server)
    started = time.monotonic()
    results = {r.feed: r for r in poller(feeds, ledger).poll_all()}
    assert time.monotonic() - started < 20
    assert {name: (r.status, r.queued) for name, r in results.items() if r.status == "ok"} == \
        {"good-a": ("ok", 1), "good-b": ("ok", 1)}
    errors = {name: r.error for name, r in results.items() if r.status == "error"}
    assert errors == {
        "laughs": "the document declares XML entities in its DOCTYPE (refused: entity expansion and external "
                  "entities are not allowed)",
        "xxe": "the document declares XML entities in its DOCTYPE (refused: entity expansion and external "
               "entities are not allowed)",
        "bomb": "the response is larger than the cap of 1 MB (counted after decompression); stopped reading",
        "html": "the server sent an HTML page, not a feed (a login or error page?)",
        "utf8": f"the body is not valid utf-8 (as its XML declaration says): invalid start byte at byte "
                f"{BAD_UTF8.index(bytes([0xff]))}",
        "truncated": errors["truncated"],  # checked below: the column counts feedparser's rewritten declaration
        "oversize": "the response is larger than the cap of 1 MB (counted after decompression); stopped reading",
        "declared-oversize": "the response is 1.5 MB, above the cap of 1 MB",
    }
    assert re.fullmatch(r"invalid XML \(line 1, column \d+: no element found\) and no entries could be recovered",
                        errors["truncated"] or "")
    assert {e.key for e in ledger.entries()} == {h(1), h(2)}


def test_a_feed_truncated_after_complete_items_keeps_them_with_a_warning(server: LoopbackServer,
                                                                       ledger: Ledger) -> None:
    body = rss(item("One", 1), item("Two", 2))
    server.routes["/cut"] = static(body[:body.index(b"</channel>") - 3])
    feed = make_feed("cut", server.url("/cut"), accept_all=True)
    result = poller([feed], ledger).poll(feed)
    assert (result.status, [e.title for e in result.entries], result.queued) == ("ok", ["One", "Two"], 2)
    assert result.warnings and result.warnings[0].startswith("invalid XML (line 1, column ")


# ================================================================ HTTP behaviour


def test_requests_carry_user_agent_headers_cookies_and_accept_gzip(server: LoopbackServer, ledger: Ledger) -> None:
    server.routes["/feed"] = static(gzip.compress(rss(item("Zipped", 1))), headers={"Content-Encoding": "gzip"})
    feed = make_feed("private", server.url("/feed"), accept_all=True, user_agent="daemon115-test/1",
                     headers={"X-Api-Key": "k-123"}, cookies={"uid": "7", "pass": "p-456"})
    result = poller([feed], ledger).poll(feed)
    assert [e.title for e in result.entries] == ["Zipped"]
    sent = server.hits("/feed")[0].headers
    assert sent["user-agent"] == "daemon115-test/1"
    assert sent["x-api-key"] == "k-123"
    assert "gzip" in sent["accept-encoding"]
    assert sorted(sent["cookie"].split("; ")) == ["pass=p-456", "uid=7"]


def test_etag_makes_the_next_poll_conditional_and_a_304_parses_nothing(server: LoopbackServer, ledger: Ledger,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    parses: list[int] = []
    real = feeds_module.read_feed

    def counting_read_feed(body: bytes, **options: Any) -> feeds_module.ParsedFeed:
        parses.append(len(body))
        return real(body, **options)

    monkeypatch.setattr(feeds_module, "read_feed", counting_read_feed)
    server.routes["/feed"] = static(rss(item("One", 1)), etag='"v1"')
    feed = make_feed("etag", server.url("/feed"), accept_all=True)
    poll = poller([feed], ledger)
    first, second = poll.poll(feed), poll.poll(feed)
    assert (first.status, first.queued) == ("ok", 1)
    assert (second.status, second.entries, second.verdicts) == ("not-modified", (), ())
    assert [r.headers.get("if-none-match") for r in server.hits("/feed")] == [None, '"v1"']
    assert len(parses) == 1


def test_last_modified_makes_the_next_poll_conditional(server: LoopbackServer, ledger: Ledger) -> None:
    stamp = "Wed, 21 Oct 2015 07:28:00 GMT"
    server.routes["/feed"] = static(rss(item("One", 1)), last_modified=stamp)
    feed = make_feed("lm", server.url("/feed"), accept_all=True)
    poll = poller([feed], ledger)
    assert [poll.poll(feed).status, poll.poll(feed).status] == ["ok", "not-modified"]
    assert [r.headers.get("if-modified-since") for r in server.hits("/feed")] == [None, stamp]


def test_validators_survive_a_restart_and_follow_the_url(server: LoopbackServer, ledger: Ledger) -> None:
    server.routes["/feed"] = static(rss(item("One", 1)), etag='"v1"')
    feed = make_feed("etag", server.url("/feed"), accept_all=True)
    poller([feed], ledger).poll(feed)
    assert poller([feed], ledger).poll(feed).status == "not-modified"
    moved = make_feed("etag", server.url("/feed?passkey=new"), accept_all=True)
    assert poller([moved], ledger).poll(moved).status == "ok"
    assert [r.headers.get("if-none-match") for r in server.hits("/feed")] == [None, '"v1"', None]


def test_the_feeds_redirects_are_followed_but_its_cookies_stay_on_its_host(server: LoopbackServer,
                                                                         ledger: Ledger) -> None:
    server.routes["/old"] = Reply(301, headers={"Location": server.url("/new", host="localhost")})
    server.routes["/new"] = static(rss(item("Moved", 1)))
    feed = make_feed("moved", server.url("/old"), accept_all=True, cookies={"pass": "p-456"},
                     headers={"X-Api-Key": "k-123"})
    result = poller([feed], ledger).poll(feed)
    assert [e.title for e in result.entries] == ["Moved"]
    assert server.hits("/old")[0].headers["cookie"] == "pass=p-456"
    assert "cookie" not in server.hits("/new")[0].headers
    assert "x-api-key" not in server.hits("/new")[0].headers


def test_a_slow_server_times_out_without_holding_up_the_others(server: LoopbackServer, ledger: Ledger) -> None:
    server.routes["/slow"] = Reply(200, rss(item("Late", 1)), delay=1.5)
    server.routes["/fast"] = static(rss(item("Fast", 2)))
    slow = make_feed("slow", server.url("/slow", host="localhost"), accept_all=True, timeout=0.3)
    fast = make_feed("fast", server.url("/fast"), accept_all=True)
    results = {r.feed: r for r in poller([slow, fast], ledger).poll_all()}
    assert results["slow"].error == f"localhost:{server.port} did not answer within 0.3s"
    assert results["fast"].queued == 1


def test_feeds_on_one_host_are_fetched_one_after_another_with_a_gap(server: LoopbackServer, ledger: Ledger) -> None:
    server.routes["/a"] = static(rss(item("A", 1)))
    server.routes["/b"] = Reply(500, b"down")
    server.routes["/c"] = static(rss(item("C", 3)))
    feeds = [make_feed(n, server.url(f"/{n}"), accept_all=True) for n in "abc"]
    results = poller(feeds, ledger, host_gap=0.25).poll_all()
    assert [(r.feed, r.status) for r in results] == [("a", "ok"), ("b", "error"), ("c", "ok")]
    times = [server.hits(f"/{n}")[0].at for n in "abc"]
    assert times[1] - times[0] >= 0.24 and times[2] - times[1] >= 0.24


def test_a_refused_connection_names_the_host_but_never_the_passkey(ledger: Ledger) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = LogRecorder()
    feed = make_feed("private", f"http://127.0.0.1:{port}/rss?passkey=SECRET-PASSKEY", accept_all=True,
                     cookies={"pass": "SECRET-COOKIE"})
    result = poller([feed], ledger, log=log).poll(feed)
    assert result.error is not None and result.error.startswith(f"could not connect to 127.0.0.1:{port}")
    assert "SECRET" not in result.error and "SECRET" not in log.text()
    assert "SECRET" not in (ledger.meta_get("feed:private") or "")


# ================================================================ backoff


def test_failures_back_off_1_min_doubling_to_24_h_and_recover(server: LoopbackServer, ledger: Ledger) -> None:
    clock = Clock()
    server.routes["/feed"] = Reply(503, b"busy")
    feed = make_feed("flaky", server.url("/feed"), accept_all=True)
    poll = poller([feed], ledger, clock=clock)
    pauses = []
    for _ in range(13):
        result = poll.poll(feed)
        assert (result.status, result.error) == ("error", "HTTP 503 Service Unavailable")
        until = poll.health()[0].backoff_until
        assert until is not None
        pauses.append(until - clock.now)
        assert poll.due(clock.now) == [(feed, until)]
        clock.now = until + 1
    assert pauses == [60 * 2**n for n in range(11)] + [86400, 86400]
    server.routes["/feed"] = static(rss(item("Back", 1)))
    assert poll.poll(feed).status == "ok"
    health = poll.health()[0]
    assert (health.failures, health.backoff_until, health.last_error, health.last_ok) == (0, None, None, clock.now)


def test_a_feed_in_backoff_is_skipped_without_a_request_unless_forced(server: LoopbackServer,
                                                                    ledger: Ledger) -> None:
    clock = Clock()
    server.routes["/feed"] = Reply(500, b"oops")
    feed = make_feed("flaky", server.url("/feed"), accept_all=True)
    poll = poller([feed], ledger, clock=clock)
    poll.poll(feed)
    clock.now += 30
    skipped = poll.poll(feed)
    assert skipped.status == "skipped-backoff"
    assert skipped.error == ("backing off until 2025-06-15T15:07:40Z after 1 failure(s): HTTP 500 "
                             "Internal Server Error")
    assert len(server.hits("/feed")) == 1
    assert poll.poll_all(force=True)[0].status == "error"
    assert len(server.hits("/feed")) == 2


def test_retry_after_is_honoured_in_seconds_and_as_a_date(server: LoopbackServer, ledger: Ledger) -> None:
    clock = Clock()
    feed = make_feed("limited", server.url("/feed"), accept_all=True)
    server.routes["/feed"] = Reply(429, b"slow down", {"Retry-After": "900"})
    poll = poller([feed], ledger, clock=clock)
    poll.poll(feed)
    assert poll.health()[0].backoff_until == clock.now + 900
    clock.now += 901
    server.routes["/feed"] = Reply(503, b"later", {"Retry-After": email.utils.formatdate(clock.now + 7200,
                                                                                        usegmt=True)})
    poll.poll(feed)
    assert poll.health()[0].backoff_until == pytest.approx(clock.now + 7200, abs=1)


def test_health_survives_a_restart(server: LoopbackServer, ledger: Ledger) -> None:
    server.routes["/feed"] = Reply(404, b"gone")
    feed = make_feed("gone", server.url("/feed"), accept_all=True)
    poller([feed], ledger).poll(feed)
    health = poller([feed], ledger).health()[0]
    assert (health.failures, health.last_error) == (1, "HTTP 404 Not Found")


def test_due_spreads_feeds_by_a_steady_jitter_of_at_most_a_tenth_of_the_interval(server: LoopbackServer,
                                                                                ledger: Ledger) -> None:
    clock = Clock()
    feeds = [make_feed(f"f{i}", server.url(f"/f{i}"), accept_all=True, interval=900.0) for i in range(6)]
    for i in range(6):
        server.routes[f"/f{i}"] = static(rss(item(f"F{i}", i)))
    poll = poller(feeds, ledger, clock=clock)
    assert poll.due(clock.now) == [(f, clock.now) for f in feeds]
    poll.poll_all()
    plan = poll.due(clock.now)
    offsets = [at - clock.now - 900 for _, at in plan]
    assert all(0 <= off < 90 for off in offsets)
    assert len(set(offsets)) > 1
    assert plan == poll.due(clock.now + 5)


# ================================================================ memory of entries


def test_entries_are_judged_once_and_rejudged_when_the_rules_change(server: LoopbackServer, ledger: Ledger) -> None:
    server.routes["/feed"] = static(rss(item("Frieren - 07", 1), item("Dandadan - 07", 2)))
    feed = make_feed("anime", server.url("/feed"), rule("f", "frieren"))
    poll = poller([feed], ledger)
    first = poll.poll(feed)
    second = poll.poll(feed)
    assert (first.evaluated, first.queued, [v.grab for v in first.verdicts]) == (2, 1, [True, False])
    assert (second.evaluated, second.queued) == (0, 0)
    assert [v.reason for v in second.verdicts] == ["seen in an earlier poll"] * 2
    widened = make_feed("anime", server.url("/feed"), rule("f", "frieren"), rule("d", "dandadan"))
    third = poller([widened], ledger).poll(widened)
    assert (third.evaluated, third.queued, third.duplicates) == (2, 1, 1)


def test_a_repeated_item_in_one_feed_is_judged_once(server: LoopbackServer, ledger: Ledger) -> None:
    server.routes["/p"] = static((FEEDS / "torznab_prowlarr_duplicate_item.autobrr.xml").read_bytes())
    feed = make_feed("prowlarr", server.url("/p"), rule("nothing", "no such title"))
    result = poller([feed], ledger).poll(feed)
    assert [v.reason for v in result.verdicts] == ["rule nothing: title does not match any include"] * 2 + [
        "the same entry as an earlier one in this feed"]
    assert result.evaluated == 2


def test_a_poll_sharing_no_entry_with_the_last_one_warns_of_missed_entries(server: LoopbackServer,
                                                                         ledger: Ledger) -> None:
    log = LogRecorder()
    feed = make_feed("busy", server.url("/feed"), accept_all=True)
    poll = poller([feed], ledger, log=log)
    flags = []
    for window in ((1, 2), (3, 4), (4, 5)):
        server.routes["/feed"] = static(rss(*(item(f"E{n}", n) for n in window)))
        flags.append(poll.poll(feed).missed_warning)
    assert flags == [False, True, False]
    assert [line[1] for line in log.lines if line[0] == "warning"] == ["feed may have missed entries"]


# ================================================================ grabbing and the ledger


def test_grabs_are_recorded_with_source_rule_title_and_target(server: LoopbackServer, ledger: Ledger) -> None:
    server.routes["/feed"] = static((FEEDS / "kickass_torrent_ns_prefixed.sonarr.xml").read_bytes())
    feed = make_feed("kat", server.url("/feed"), rule("triangle-hd", "triangle.*720p", target="42"),
                     target="7")
    result = poller([feed], ledger).poll(feed)
    assert (result.queued, result.duplicates) == (2, 0)
    row = ledger.get("8427bfb8884b8228364ebb9b3ea7d8b77e03a7bc")
    assert row is not None
    assert (row.source, row.rule, row.name, row.target, row.status) == (
        "feed:kat", "triangle-hd", "Triangle.E03.140512.HDTV.H264.720p-iPOP.avi [CTRG]", "42", "queued")
    assert row.url.startswith("magnet:?xt=urn:btih:8427bfb8884b8228364ebb9b3ea7d8b77e03a7bc")


def test_the_same_torrent_from_two_feeds_is_recorded_once(server: LoopbackServer, ledger: Ledger) -> None:
    server.routes["/ezrss"] = static((FEEDS / "ezrss_torrent_ns_default.sonarr.xml").read_bytes())
    server.routes["/eztv"] = static((FEEDS / "eztv_magnet_cdata_link.sonarr.xml").read_bytes())
    feeds = [make_feed("ezrss", server.url("/ezrss"), rule("andy", "mcnab")),
             make_feed("eztv", server.url("/eztv"), rule("andy", "mcnab"))]
    results = poller(feeds, ledger).poll_all()
    assert [(r.queued, r.duplicates) for r in results] == [(1, 0), (0, 1)]
    assert ledger.sources("aaa2038bed9ebca2c312d1c9c3e8e024d0eb414e") == ["feed:ezrss", "feed:eztv"]


def test_a_torrent_url_with_a_hash_in_its_path_is_keyed_by_that_hash(server: LoopbackServer, ledger: Ledger) -> None:
    server.routes["/lime"] = static((FEEDS / "limetorrents_itorrents_url.sonarr.xml").read_bytes())
    feed = make_feed("lime", server.url("/lime"), rule("legion", "legion"))
    poller([feed], ledger).poll(feed)
    row = ledger.get("ed2903db3f4b3d728d2e7091c33b6f502a0fb5d4")
    assert row is not None and row.url == (LIME + "ED2903DB3F4B3D728D2E7091C33B6F502A0FB5D4.torrent"
                                           "?title=Legion-S01E02-720p-HDTV-x264-AVS[PRiME]")


def test_a_link_without_a_hash_is_keyed_by_its_url_after_asking_for_redirects(server: LoopbackServer,
                                                                             ledger: Ledger) -> None:
    server.routes["/download.php/123/x.torrent"] = Reply(200, b"d8:announce3:urle" * 1000)
    body = rss(f"<item><title>Surviving Marriage S01E09</title><link>{server.url('/download.php/123/x.torrent')}"
               "?torrent_pass=abc</link></item>")
    server.routes["/td"] = static(body)
    feed = make_feed("td", server.url("/td"), accept_all=True)
    poller([feed], ledger).poll(feed)
    key = server.url("/download.php/123/x.torrent") + "?torrent_pass=abc"
    row = ledger.get(key)
    assert row is not None and (row.info_hash, row.url) == (None, key)
    assert len(server.hits("/download.php/123/x.torrent")) == 1


def test_an_indexer_link_redirecting_to_a_magnet_is_recorded_as_that_magnet(server: LoopbackServer,
                                                                            ledger: Ledger) -> None:
    magnet = "magnet:?xt=urn:btih:9FB267CFF5AE5603F07A347676EC3BF3E35F75E1&dn=Series+Title+S05E02"
    server.routes["/dl/tpb/1"] = Reply(302, headers={"Location": server.url("/dl/tpb/2")})
    server.routes["/dl/tpb/2"] = Reply(302, headers={"Location": magnet})
    body = rss(f"<item><title>Series Title S05E02</title><enclosure url=\"{server.url('/dl/tpb/1')}?jackett_apikey=k\""
               ' type="application/x-bittorrent" length="388895872"/></item>')
    server.routes["/jackett"] = static(body)
    feed = make_feed("jackett", server.url("/jackett"), accept_all=True)
    result = poller([feed], ledger).poll(feed)
    row = ledger.get("9fb267cff5ae5603f07a347676ec3bf3e35f75e1")
    assert row is not None and row.url.startswith("magnet:?xt=urn:btih:9fb267cff5ae5603f07a347676ec3bf3e35f75e1")
    assert result.entries[0].link == row.url and result.entries[0].info_hash == row.info_hash
    assert result.entries[0].size == 388895872


def mikan_on_loopback(server: LoopbackServer) -> bytes:
    """The real Mikan capture with its download host pointed at the loopback server."""
    return (FEEDS / "mikan_bangumi_3633_534.konobangu.xml").read_bytes().replace(
        b"https://mikanani.me/Download/", server.url("/Download/").encode())


def test_resolve_torrents_downloads_with_the_feeds_cookies_and_records_magnets(server: LoopbackServer,
                                                                             ledger: Ledger) -> None:
    hashes = ("45e14c26b0a78b1b3bdbc3dd2763a1242ee420b4", "58ab31bec4f710fd75816b590728bf0af1bdf1ca")

    def torrent(info_hash: str) -> Callable[[Request], Reply]:
        data = (TORRENTS / f"mikan_{info_hash}.konobangu.torrent").read_bytes()
        return lambda req: Reply(200, data) if req.headers.get("cookie") == "auth=ok" else Reply(403, b"login")

    for info_hash in hashes:
        server.routes[f"/Download/20250403/{info_hash}.torrent"] = torrent(info_hash)
    server.routes["/mikan"] = static(mikan_on_loopback(server))
    feed = make_feed("mikan", server.url("/mikan"), rule("garden", "enter the garden"), resolve_torrents=True,
                     cookies={"auth": "ok"})
    result = poller([feed], ledger).poll(feed)
    assert result.queued == 2
    for info_hash in hashes:
        row = ledger.get(info_hash)
        assert row is not None and row.url.startswith(f"magnet:?xt=urn:btih:{info_hash}&dn=")
        assert "&tr=" in row.url
    assert [e.link for e in result.entries] == [ledger.get(x).url for x in hashes]  # type: ignore[union-attr]


def test_an_unresolvable_grab_is_not_remembered_and_is_retried(server: LoopbackServer, ledger: Ledger) -> None:
    server.routes["/mikan"] = static(mikan_on_loopback(server))
    feed = make_feed("mikan", server.url("/mikan"), rule("ep2", r"garden - 02"), resolve_torrents=True)
    poll = poller([feed], ledger)
    failed = poll.poll(feed)
    assert failed.queued == 0
    assert failed.verdicts[0].grab is False
    assert failed.verdicts[0].reason == ("rule ep2 matches, but the link could not be resolved: the download link "
                                         "answered HTTP 404")
    info_hash = "45e14c26b0a78b1b3bdbc3dd2763a1242ee420b4"
    server.routes[f"/Download/20250403/{info_hash}.torrent"] = Reply(
        200, (TORRENTS / f"mikan_{info_hash}.konobangu.torrent").read_bytes())
    retried = poll.poll(feed)
    assert (retried.evaluated, retried.queued) == (1, 1)
    assert ledger.get(info_hash) is not None


# ================================================================ episodes across feeds


def episode_feeds(server: LoopbackServer, **rule_options: Any) -> list[Feed]:
    server.routes["/a"] = static(rss(
        item("[SubsPlease] Sousou no Frieren - 07 (1080p) [A1B2C3D4].mkv", 1,
             published="Fri, 06 Oct 2023 16:00:00 GMT"),
        item("Sousou.no.Frieren.S01E08.1080p.WEB", 2, published="Fri, 13 Oct 2023 16:00:00 GMT")))
    server.routes["/b"] = static(rss(
        item("[Erai-raws] Sousou no Frieren - 07 [1080p]", 11, published="Fri, 06 Oct 2023 15:00:00 GMT"),
        item("[Nekomoe] Sousou no Frieren [07v2][1080p]", 12, published="Sat, 07 Oct 2023 10:00:00 GMT"),
        item("[Nekomoe] Sousou no Frieren EP09 [1080p]", 13, published="Fri, 20 Oct 2023 16:00:00 GMT"),
        item("[LoliHouse] 葬送的芙莉莲 / Sousou no Frieren 第09话 [1080p]", 14,
             published="Fri, 20 Oct 2023 17:00:00 GMT"),
        item("Sousou no Frieren 1x08 720p", 15, published="Sat, 14 Oct 2023 10:00:00 GMT")))
    return [make_feed(name, server.url(f"/{name}"), rule("frieren", "frieren", episodes=True, **rule_options))
            for name in "ab"]


def grabbed(results: list[PollResult]) -> dict[str, list[str]]:
    return {r.feed: [e.title for e, v in zip(r.entries, r.verdicts, strict=True) if v.grab] for r in results}


def test_episodes_grab_the_first_release_across_feeds_and_skip_later_ones(server: LoopbackServer,
                                                                        ledger: Ledger) -> None:
    results = poller(episode_feeds(server), ledger).poll_all()
    assert grabbed(results) == {
        "a": ["[SubsPlease] Sousou no Frieren - 07 (1080p) [A1B2C3D4].mkv", "Sousou.no.Frieren.S01E08.1080p.WEB"],
        "b": ["[Nekomoe] Sousou no Frieren EP09 [1080p]"],
    }
    reasons = [v.reason for v in results[1].verdicts]
    assert reasons[0] == "rule frieren: S01E07 of 'sousou no frieren' was already grabbed"
    assert reasons[1] == ("rule frieren: S01E07 of 'sousou no frieren' was already grabbed (this is a repack; "
                          "allow_repack is not set)")
    assert reasons[3] == "rule frieren: S01E09 of 'sousou no frieren' was already grabbed"
    assert reasons[4] == "rule frieren: S01E08 of 'sousou no frieren' was already grabbed"
    assert len(ledger.entries()) == 3


def test_allow_repack_lets_a_v2_through_once(server: LoopbackServer, ledger: Ledger) -> None:
    results = poller(episode_feeds(server, allow_repack=True), ledger).poll_all()
    assert "[Nekomoe] Sousou no Frieren [07v2][1080p]" in grabbed(results)["b"]
    server.routes["/c"] = static(rss(item("[Other] Sousou no Frieren - 07v2 [720p]", 21)))
    again = make_feed("c", server.url("/c"), rule("frieren", "frieren", episodes=True, allow_repack=True))
    assert grabbed([poller([again], ledger).poll(again)]) == {"c": []}


def test_the_episode_memory_survives_a_restart(server: LoopbackServer, ledger: Ledger) -> None:
    feeds = episode_feeds(server)
    poller(feeds[:1], ledger).poll(feeds[0])
    assert grabbed([poller(feeds[1:], ledger).poll(feeds[1])]) == {"b": ["[Nekomoe] Sousou no Frieren EP09 [1080p]"]}


# ================================================================ rss test: the sink that writes nothing


def test_rss_test_records_nothing_and_writes_no_state(server: LoopbackServer, ledger: Ledger) -> None:
    feeds = episode_feeds(server)
    first = poller(feeds, ledger, record=False).poll_all()
    second = poller(feeds, ledger, record=False).poll_all()
    assert grabbed(first) == grabbed(second) == {
        "a": ["[SubsPlease] Sousou no Frieren - 07 (1080p) [A1B2C3D4].mkv", "Sousou.no.Frieren.S01E08.1080p.WEB"],
        "b": ["[Nekomoe] Sousou no Frieren EP09 [1080p]"],
    }
    assert [(r.queued, r.duplicates) for r in first] == [(0, 0), (0, 0)]
    assert ledger.entries() == []
    assert [ledger.meta_get(k) for k in ("feed:a", "feed:a:seen", "feed:b", "feeds:episodes")] == [None] * 4


def test_rss_test_ignores_validators_backoff_and_memory(server: LoopbackServer, ledger: Ledger) -> None:
    server.routes["/feed"] = static(rss(item("One", 1)), etag='"v1"')
    feed = make_feed("f", server.url("/feed"), accept_all=True)
    poller([feed], ledger).poll(feed)
    result = poller([feed], ledger, record=False).poll(feed)
    assert (result.status, result.evaluated) == ("ok", 1)
    assert result.verdicts[0].reason == "accept_all: true (already in the ledger: queued)"
    assert server.hits("/feed")[1].headers.get("if-none-match") is None


def test_rss_test_rows_follow_the_interface(server: LoopbackServer, ledger: Ledger) -> None:
    server.routes["/nyaa"] = static((FEEDS / "nyaa_si_2021.sonarr.xml").read_bytes())
    feed = make_feed("nyaa", server.url("/nyaa"), rule("mahouka", "mahouka", min_seeders=2),
                     rule("big", max_size=5 * 10**9))
    rows = rss_test_rows(poller([feed], ledger, record=False).poll_all())
    assert rows[0] == {"feed": "nyaa", "title": "[Foxy-Subs] Mahouka Koukou no Yuutousei - 08 [720p] [3194D881].mkv",
                       "link": "https://nyaa.si/download/1424896.torrent",
                       "info_hash": "e8ca5e20eca876339f41c3d9e95ea66c1d7caaee", "size": round(609.6 * MIB),
                       "grab": True, "rule": "mahouka", "reason": "rule mahouka matches"}
    assert rows[1]["grab"] is False and rows[1]["rule"] is None
    assert rows[1]["reason"] == ("rule mahouka: title does not match any include; rule big: size 6.12 GB above "
                                 "max_size 5 GB")
    assert [row["grab"] for row in rows] == [True, False, True]
    assert ledger.entries() == []


def test_an_entry_with_only_a_hash_and_a_page_link_is_grabbed_as_a_magnet(server: LoopbackServer,
                                                                          ledger: Ledger) -> None:
    body = rss('<item><title>Hash Only S01E01</title><link>https://tracker.example/view/1</link>'
               f'<torrent:infoHash>{"AB" * 20}</torrent:infoHash></item>',
               extra_ns=' xmlns:torrent="http://xmlns.ezrss.it/0.1/"')
    server.routes["/feed"] = static(body)
    feed = make_feed("hashes", server.url("/feed"), accept_all=True)
    result = poller([feed], ledger).poll(feed)
    row = ledger.get("ab" * 20)
    assert row is not None and row.url == "magnet:?xt=urn:btih:" + "ab" * 20 + "&dn=Hash%20Only%20S01E01"
    assert result.entries[0].link == row.url


def test_rss_test_polls_a_feed_that_is_backing_off(server: LoopbackServer, ledger: Ledger) -> None:
    server.routes["/feed"] = Reply(500, b"down")
    feed = make_feed("f", server.url("/feed"), accept_all=True)
    poller([feed], ledger).poll(feed)
    server.routes["/feed"] = static(rss(item("Up again", 1)))
    result = poller([feed], ledger, record=False).poll(feed)
    assert [e.title for e in result.entries] == ["Up again"]
    assert poller([feed], ledger).poll(feed).status == "skipped-backoff"


def test_a_poll_the_ledger_cannot_record_forgets_nothing(server: LoopbackServer, tmp_path: Path) -> None:
    path = tmp_path / "busy.sqlite3"
    server.routes["/feed"] = static(rss(item("[G] Frieren - 07 [1080p]", 1)))
    feed = make_feed("f", server.url("/feed"), rule("frieren", "frieren", episodes=True))
    with Ledger(path, busy_timeout=0.2) as ledger:
        poll = poller([feed], ledger)
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        failed = poll.poll(feed)
        blocker.execute("ROLLBACK")
        blocker.close()
        assert failed.status == "error"
        assert failed.error is not None and failed.error.startswith("the ledger could not record this poll: ")
        retried = poll.poll(feed)
        assert (retried.status, retried.evaluated, retried.queued) == ("ok", 1, 1)


def test_closing_the_poller_leaves_a_session_passed_in_open(server: LoopbackServer, ledger: Ledger) -> None:
    class CountingSession(requests.Session):
        closes = 0

        def close(self) -> None:
            self.closes += 1
            super().close()

    server.routes["/feed"] = static(rss(item("One", 1)))
    feed = make_feed("f", server.url("/feed"), accept_all=True)
    mine = CountingSession()
    with FeedPoller([feed], ledger, session=mine, host_gap=0) as poll:
        assert poll.poll(feed).status == "ok"
    assert mine.closes == 0
    mine.close()
    assert mine.closes == 1


@settings(max_examples=80, deadline=None)
@given(name=st.sampled_from(sorted(EXPECTED)), cut=st.floats(0, 1), flips=st.lists(
    st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4))
def test_truncated_or_corrupted_fixtures_give_entries_or_a_feed_error(name: str, cut: float,
                                                                     flips: list[tuple[float, int]]) -> None:
    body = bytearray((FEEDS / name).read_bytes())
    for where, value in flips:
        body[int(where * (len(body) - 1))] = value
    body = body[:int(cut * len(body))]
    try:
        entries = parse_feed(bytes(body), feed="f", url="http://h/feed")
    except FeedError as error:
        assert str(error)
    else:
        assert all(e.link is None or e.link.startswith(("http", "magnet:", "ftp", "ed2k")) for e in entries)
