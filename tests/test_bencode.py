"""Specification of daemon115.bencode: strict, bounded decoding that reports where each top-level value lies."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon115.bencode import (
    MAX_DEPTH,
    BencodeError,
    bdecode,
    bdecode_dict_spans,
    bdecode_prefix,
    bencode,
)

TORRENTS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real-world" / "torrents"


# ---------------------------------------------------------------- decoding values


def test_decodes_each_type() -> None:
    assert bdecode(b"i42e") == 42
    assert bdecode(b"i-7e") == -7
    assert bdecode(b"i0e") == 0
    assert bdecode(b"4:spam") == b"spam"
    assert bdecode(b"0:") == b""
    assert bdecode(b"l4:spami1ee") == [b"spam", 1]
    assert bdecode(b"d3:cow3:moo4:spaml1:a1:bee") == {b"cow": b"moo", b"spam": [b"a", b"b"]}


def test_strings_stay_bytes_even_when_not_utf8() -> None:
    assert bdecode(b"2:\xff\xfe") == b"\xff\xfe"


def test_dictionary_keys_out_of_order_are_tolerated_and_keep_their_order() -> None:
    assert list(bdecode(b"d1:bi1e1:ai2ee")) == [b"b", b"a"]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"i03e", "malformed integer"),
        (b"i-0e", "malformed integer"),
        (b"ie", "malformed integer"),
        (b"i-e", "malformed integer"),
        (b"i1.5e", "malformed integer"),
        (b"i 1e", "malformed integer"),
        (b"i12", "unterminated integer"),
        (b"i" + b"9" * 70 + b"e", "longer than 64 digits"),
        (b"04:spam", "malformed string length"),
        (b"5:spam", "runs past the end"),
        (b"4spam", "not followed by ':'"),
        (b"4", "not followed by ':'"),
        (b"99999999999999999999999:x", "longer than the input"),
        (b"l4:spam", "unterminated list"),
        (b"d3:cow3:moo", "unterminated dictionary"),
        (b"di1e3:mooe", "dictionary key is not a byte string"),
        (b"d1:ai1e1:ai2ee", "duplicate dictionary key"),
        (b"d1:ae", "key b'a' has no value"),
        (b"d1:a", "unexpected end of input"),
        (b"x", "unexpected byte"),
        (b"", "unexpected end of input"),
        (b"i1ei2e", "trailing byte"),
    ],
)
def test_malformed_input_is_rejected_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(BencodeError, match=reason):
        bdecode(data)


def test_error_names_the_offset_of_the_bad_byte() -> None:
    with pytest.raises(BencodeError) as caught:
        bdecode(b"l4:spami03ee")
    assert caught.value.offset == 7
    assert str(caught.value).endswith("at offset 7")


def test_nesting_is_bounded() -> None:
    assert bdecode(b"l" * MAX_DEPTH + b"e" * MAX_DEPTH) is not None
    with pytest.raises(BencodeError, match="nested deeper than 64"):
        bdecode(b"l" * (MAX_DEPTH + 1) + b"e" * (MAX_DEPTH + 1))


def test_pathologically_deep_input_is_a_bencode_error_not_a_recursion_error() -> None:
    with pytest.raises(BencodeError):
        bdecode(b"l" * 200_000)
    with pytest.raises(BencodeError):
        bdecode(b"d1:a" * 100_000)


def test_prefix_decoding_reports_where_the_value_ends() -> None:
    assert bdecode_prefix(b"i5eXYZ") == (5, 3)
    assert bdecode_prefix(b"..3:abc.", start=2) == (b"abc", 7)


# ---------------------------------------------------------------- spans


def test_spans_locate_each_top_level_value() -> None:
    data = b"d4:infod4:name1:xe3:numi7ee"
    top = bdecode_dict_spans(data)
    assert top.value == {b"info": {b"name": b"x"}, b"num": 7}
    assert data[slice(*top.spans[b"info"])] == b"d4:name1:xe"
    assert data[slice(*top.spans[b"num"])] == b"i7e"
    assert top.end == len(data)


def test_spans_leave_trailing_bytes_to_the_caller() -> None:
    top = bdecode_dict_spans(b"de\n")
    assert top.end == 2


def test_spans_need_a_dictionary() -> None:
    with pytest.raises(BencodeError, match="expected a dictionary"):
        bdecode_dict_spans(b'{"status":404}')
    with pytest.raises(BencodeError, match="empty input"):
        bdecode_dict_spans(b"")


def test_unordered_info_keys_fixture_must_be_hashed_over_its_raw_bytes() -> None:
    data = (TORRENTS / "unordered_info_keys.libtorrent.torrent").read_bytes()
    top = bdecode_dict_spans(data)
    raw = data[slice(*top.spans[b"info"])]
    assert bdecode(raw) == top.value[b"info"]
    assert bencode(top.value[b"info"]) != raw
    assert hashlib.sha1(bencode(top.value[b"info"])).digest() != hashlib.sha1(raw).digest()


@pytest.mark.parametrize("path", sorted(TORRENTS.glob("*.torrent")), ids=lambda p: p.name)
def test_every_real_torrent_info_span_decodes_to_the_info_value(path: Path) -> None:
    data = path.read_bytes()
    if not data.startswith(b"d"):  # the 14-byte JSON error page saved as .torrent
        with pytest.raises(BencodeError, match="expected a dictionary"):
            bdecode_dict_spans(data)
        return
    top = bdecode_dict_spans(data)
    assert bdecode(data[slice(*top.spans[b"info"])]) == top.value[b"info"]
    assert data[top.end :].strip() == b""


# ---------------------------------------------------------------- encoding


def test_encoding_is_canonical() -> None:
    assert bencode({"b": 1, b"a": [b"x", "\u00e9", -3]}) == b"d1:al1:x2:\xc3\xa9i-3ee1:bi1ee"
    assert bencode(()) == b"le"


@pytest.mark.parametrize("value", [True, 1.5, None, {1: 2}, object()])
def test_values_bencode_cannot_hold_are_refused(value: object) -> None:
    with pytest.raises(TypeError):
        bencode(value)


def test_a_key_given_as_both_str_and_bytes_is_a_duplicate() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        bencode({"a": 1, b"a": 2})


# ---------------------------------------------------------------- properties

_values = st.recursive(
    st.integers(min_value=-(10**60), max_value=10**60) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.binary(max_size=10), inner, max_size=5),
    max_leaves=30,
)


@given(_values)
def test_decoding_an_encoding_gives_the_value_back(value: object) -> None:
    assert bdecode(bencode(value)) == value


@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_a_value_or_a_bencode_error(data: bytes) -> None:
    with contextlib.suppress(BencodeError):
        bdecode(data)
    with contextlib.suppress(BencodeError):
        bdecode_dict_spans(data)


@settings(max_examples=200)
@given(
    st.sampled_from(sorted(p.name for p in TORRENTS.glob("*.torrent"))),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), max_size=4),
    st.integers(min_value=0),
)
def test_damaged_real_torrents_give_a_value_or_a_bencode_error(name: str, flips: list, cut: int) -> None:
    data = bytearray((TORRENTS / name).read_bytes())
    for position, byte in flips:
        data[position % len(data)] = byte
    with contextlib.suppress(BencodeError):
        bdecode_dict_spans(bytes(data[: cut % (len(data) + 1)]))
