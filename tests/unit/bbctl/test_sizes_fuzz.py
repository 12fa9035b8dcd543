"""Property-based fuzzing of the size parser (module_utils/sizes.py, through bbctl.collection).

Properties, each over BB_FUZZ_EXAMPLES / 10 generated inputs (tests/unit/fuzzing.py):

- Anything at all (text of any characters, numbers, None, bytes) gives a whole number of
  bytes >= 0 or SizeError, and a SizeError names the input: its message holds ``repr(input)``.
- Whole numbers in every unit give exactly number x unit, the units read from the docstring's
  rule (a bare letter or ``iB``: powers of 1024, ``B``: powers of 1000), not from sizes.py.
- Decimals give the exact product rounded up (fractions.Fraction as the oracle).
- format_size round-trips: parse_size(format_size(n)) == n.
"""

from __future__ import annotations

import math
from fractions import Fraction

from hypothesis import strategies as st

from bbctl.collection import sizes
from tests.unit.fuzzing import EXAMPLES, rounds, run_round

PREFIXES = "KMGTP"
UNITS = ["", "B", *(p + s for p in PREFIXES for s in ("", "iB", "B"))]
SPACES = ["", "", "", " ", "\t", "\n", "\u00a0", "\u2003"]


def multiplier(unit: str) -> int:
    if unit.upper() in ("", "B"):
        return 1
    base = 1000 if unit.upper().endswith("B") and not unit.upper().endswith("IB") else 1024
    return base ** (PREFIXES.index(unit[0].upper()) + 1)


cased_units = st.builds(lambda unit, case: case(unit), st.sampled_from(UNITS),
                        st.sampled_from([str, str.lower, str.upper, str.swapcase]))
size_like = st.builds(
    lambda before, digits, fraction, space, unit, after: before + digits + fraction + space + unit + after,
    st.sampled_from(SPACES), st.text("0123456789", min_size=1, max_size=45) | st.sampled_from(["١٢", "0", "9" * 400]),
    st.sampled_from(["", "", ".", ".5", ".067", ".0", "." + "0" * 5000]) | st.text(".0123456789eE,_-", max_size=4),
    st.sampled_from(SPACES), cased_units | st.sampled_from(["\u212a", "\u212aB", "ki", "N", "E", "b", "iB"]),
    st.sampled_from(SPACES))
anything = st.one_of(size_like, size_like, st.text(), st.integers(), st.floats(), st.none(), st.binary(max_size=8),
                     st.booleans(), st.lists(st.integers(), max_size=2))


def check_anything(value: object) -> None:
    try:
        nbytes = sizes.parse_size(value)
    except sizes.SizeError as error:
        assert repr(value) in str(error), f"the message does not name {value!r}: {error}"
        return
    assert isinstance(nbytes, int) and not isinstance(nbytes, bool) and nbytes >= 0, (value, nbytes)


def check_whole(case: tuple[int, str, str]) -> None:
    number, space, unit = case
    assert sizes.parse_size(f"{number}{space}{unit}") == number * multiplier(unit)


def check_decimal(case: tuple[int, str, str]) -> None:
    whole, fraction, unit = case
    text = f"{whole}.{fraction}"
    assert sizes.parse_size(text + unit) == math.ceil(Fraction(text) * multiplier(unit))


def check_round_trip(nbytes: int) -> None:
    assert sizes.parse_size(sizes.format_size(nbytes)) == nbytes


def run_property(strategy: st.SearchStrategy, check) -> None:
    for number, examples in rounds(max(EXAMPLES // 10, 100)):
        run_round(strategy, check, number, examples)


def test_any_input_gives_bytes_or_a_size_error_naming_it():
    run_property(anything, check_anything)


def test_whole_numbers_in_every_unit_are_exact():
    run_property(st.tuples(st.integers(0, 10**20), st.sampled_from(["", " "]), cased_units), check_whole)


def test_decimals_round_up_exactly():
    digits = st.text("0123456789", min_size=1, max_size=12)
    run_property(st.tuples(st.integers(0, 10**6), digits, cased_units), check_decimal)


def test_format_size_round_trips():
    run_property(st.integers(0, 10**30) | st.integers(0, 2**20).map(lambda n: n * 1024 ** 3), check_round_trip)


def test_what_fuzzing_found():
    """Floats rounded 0.067GB up to 67000001 bytes; 400 digits overflowed; \\d and IGNORECASE read Unicode."""
    assert sizes.parse_size("0.067GB") == 67_000_000
    for text in ["9" * 400, "1" + "0" * 40, "1\u212a", "\u0661\u0662"]:
        check_anything(text)
        assert _refused(text)
    assert sizes.parse_size("1." + "0" * 5000 + "K") == 1024


def _refused(text: str) -> bool:
    try:
        sizes.parse_size(text)
    except sizes.SizeError:
        return True
    return False
