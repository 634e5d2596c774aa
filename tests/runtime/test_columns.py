"""The rules of runtime.columns, pure: which JSON values each column kind takes, and what a refusal says."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.columns import ColumnKind, ColumnRule, value_kind
from runtime.errors import DataError

SAMPLES: dict[str, Any] = {
    "null": None,
    "true": True,
    "int": 7,
    "float": 7.5,
    "numeral": "-12.50",
    "text": "abc",
    "object": {"k": 1},
    "array": [1],
}
TAKES = {
    ColumnKind.INTEGER: {"null", "int"},
    ColumnKind.FLAG: {"null", "true", "int"},
    ColumnKind.BOOLEAN: {"null", "true"},
    ColumnKind.DECIMAL: {"null", "int", "float", "numeral"},
    ColumnKind.REAL: {"null", "int", "float"},
    ColumnKind.FLOAT: {"null", "int", "float"},
    ColumnKind.TEXT: set(SAMPLES),
    ColumnKind.STRING: {"null", "numeral", "text"},
    ColumnKind.STRUCTURED: {"null", "numeral", "text", "object", "array"},
}


def fits(rule: ColumnRule, value: Any) -> bool:
    try:
        rule.check(value)
    except DataError:
        return False
    return True


@pytest.mark.parametrize("kind", list(ColumnKind))
def test_each_kind_takes_exactly_its_values(kind: ColumnKind) -> None:
    rule = ColumnRule("f", "c", "t", kind, -100, 100)
    assert {name for name, value in SAMPLES.items() if fits(rule, value)} == TAKES[kind]
    # A type in fitting always fits (an integer once within a ranged column's bounds): a sink's one-pass look at a
    # row's types, with the bounds compared apart, never lets a misfit through.
    assert all(fits(rule, value) for value in SAMPLES.values() if type(value) in rule.fitting)
    assert rule.ranged is (kind in (ColumnKind.INTEGER, ColumnKind.FLAG, ColumnKind.REAL))


@pytest.mark.parametrize(
    ("numeral", "accepted"),
    [
        *[("0", True), ("+1", True), ("-0.5", True), (".5", True), ("5.", True)],
        *[("1e3", False), (" 1", False), ("1 ", False), ("NaN", False), ("Infinity", False)],
        *[("0x10", False), ("\u0661\u0662", False), ("", False), ("1,5", False)],  # Arabic-Indic digits are not ASCII
    ],
)
def test_decimal_numerals_are_plain_ascii_decimals(numeral: str, accepted: bool) -> None:
    assert fits(ColumnRule("f", "c", "decimal(10,2)", ColumnKind.DECIMAL), numeral) is accepted


def test_integer_bounds_are_inclusive_and_booleans_are_not_integers() -> None:
    rule = ColumnRule("f", "c", "tinyint", ColumnKind.INTEGER, -128, 127)
    assert fits(rule, -128) and fits(rule, 127)
    assert not fits(rule, -129) and not fits(rule, 128) and not fits(rule, True) and not fits(rule, 1.0)


def test_an_integer_rule_spans_its_width_signed_or_not() -> None:
    assert ColumnRule.integer("f", "c", "smallint", 16) == ColumnRule("f", "c", "smallint", ColumnKind.INTEGER, -32768, 32767)
    unsigned = ColumnRule.integer("f", "c", "bigint unsigned", 64, signed=False)
    assert (unsigned.low, unsigned.high) == (0, 2**64 - 1)
    flag = ColumnRule.integer("f", "c", "bit(1)", 1, signed=False, kind=ColumnKind.FLAG)
    assert fits(flag, True) and fits(flag, 1) and not fits(flag, 2)


def test_a_real_column_takes_the_numbers_single_precision_holds() -> None:
    rule = ColumnRule.real("f", "c", "real")
    assert all(fits(rule, value) for value in (3.4028235e38, -3.4028235e38, 2**127, -(2**127), 0.5, 0))
    assert not any(fits(rule, value) for value in (3.4028236e38, -1e39, 2**128, float("inf"), float("nan")))
    with pytest.raises(DataError, match="holds a floating-point number out of range, which does not fit column c"):
        rule.check(1e39)


def test_a_refusal_names_field_column_type_and_kind_never_the_value() -> None:
    rule = ColumnRule("order.id", "id", "int(11)", ColumnKind.INTEGER, -(2**31), 2**31 - 1)
    with pytest.raises(DataError) as refused:
        rule.check("private-value-123")
    assert refused.value.reason == (
        "field 'order.id' holds a string, which does not fit column id (int(11)): it takes integers from -2147483648"
        " to 2147483647 (fix the event, or the column's type)"
    )
    assert value_kind(b"x") == "a bytes"
