"""Jackson-exact JSON bytes and Java HashMap iteration order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.protocol.jackson import dumps, dumps_str, java_double_to_string, java_hashmap_order, java_string_hash


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", b'"plain"'),
        ('quote" backslash\\ slash/', b'"quote\\" backslash\\\\ slash/"'),
        ("\b\t\n\f\r", b'"\\b\\t\\n\\f\\r"'),
        ("\x00\x01\x0b\x0e\x1a\x1f", b'"\\u0000\\u0001\\u000B\\u000E\\u001A\\u001F"'),
        ("del\x7f ls\u2028 ps\u2029", b'"del\x7f ls\xe2\x80\xa8 ps\xe2\x80\xa9"'),
        ("\u00e9\u4e2d", '"\u00e9\u4e2d"'.encode()),
        ("\U0001f389\U0010ffff", b'"\\uD83C\\uDF89\\uDBFF\\uDFFF"'),
        ("\ud800", b'"\\uD800"'),
    ],
)
def test_strings_are_escaped_like_jackson(text: str, expected: bytes) -> None:
    assert dumps_str(text) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, "1.0"),
        (0.001, "0.001"),
        (0.0001, "1.0E-4"),
        (9999999.0, "9999999.0"),
        (1e7, "1.0E7"),
        (123456789.125, "1.23456789125E8"),
        (-2.5e-7, "-2.5E-7"),
        (0.1, "0.1"),
        (-0.0, "-0.0"),
        (1e300, "1.0E300"),
    ],
)
def test_doubles_are_written_like_java_double_to_string(value: float, expected: str) -> None:
    assert java_double_to_string(value) == expected


def test_containers_keep_the_given_order_and_write_nulls_in_maps() -> None:
    assert dumps({"z": [1, True, None, 2.5], "a": {"b": "c"}}) == b'{"z":[1,true,null,2.5],"a":{"b":"c"}}'
    assert dumps([float("nan"), float("-inf"), 1e300, 2**70]) == b'["NaN","-Infinity",1.0E300,1180591620717411303424]'


def test_string_hash_matches_java() -> None:
    # Known Java values: "Aa"/"BB" collide, "polygenelubricants" hashes to Integer.MIN_VALUE; UTF-16 units for non-BMP.
    assert java_string_hash("") == 0
    assert java_string_hash("a") == 97
    assert java_string_hash("Aa") == java_string_hash("BB") == 2112
    assert java_string_hash("polygenelubricants") == -(2**31)
    assert java_string_hash("\U0001f389") == 0xD83C * 31 + 0xDF89


def test_hashmap_order_reproduces_the_java_runtime_push_vector() -> None:
    pushed = [
        "protocolversion",
        "reqeventmesh2mqtimestamp",
        "rsp0idc",
        "reqsendeventmeship",
        "rsp0ip",
        "protocoldesc",
        "rsp0sys",
        "protocoltype",
        "rsp0group",
        "ttl",
        "reqeventmesh2ctimestamp",
        "reqc2eventmeshtimestamp",
    ]
    assert java_hashmap_order(sorted(pushed)) == pushed
    assert java_hashmap_order(["protocoltype", "protocolversion", "protocoldesc"]) == [
        "protocolversion",
        "protocoldesc",
        "protocoltype",
    ]


def test_hashmap_order_keeps_insertion_order_within_a_bucket_and_grows_the_table() -> None:
    # "Aa" and "BB" collide: same bucket, so insertion order decides.
    assert java_hashmap_order(["BB", "Aa"]) == ["BB", "Aa"]
    assert java_hashmap_order(["Aa", "BB"]) == ["Aa", "BB"]
    # Single-character keys hash to their code point; 12 keys fit 16 buckets, the 13th grows the table to 32.
    keys = [chr(code) for code in range(ord("a"), ord("a") + 13)]
    assert java_hashmap_order(keys) == sorted(keys, key=lambda key: ord(key) & 31)
    assert java_hashmap_order(keys[:12]) == sorted(keys[:12], key=lambda key: ord(key) & 15)


def _reference_escape(text: str) -> bytes:
    """Jackson's string rules spelled out one character at a time."""
    out = []
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif char in "\b\t\n\f\r":
            out.append({"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}[char])
        elif code < 0x20 or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04X}")
        elif code > 0xFFFF:
            out.append(f"\\u{0xD800 + ((code - 0x10000) >> 10):04X}\\u{0xDC00 + ((code - 0x10000) & 0x3FF):04X}")
        else:
            out.append(char)
    return ('"' + "".join(out) + '"').encode()


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(codec=None, exclude_categories=())))
def test_fast_and_slow_string_paths_agree_with_the_rules(text: str) -> None:
    expected = _reference_escape(text)
    assert dumps_str(text) == expected
    assert dumps({"k": text, "n": 1}) == b'{"k":' + expected + b',"n":1}'
