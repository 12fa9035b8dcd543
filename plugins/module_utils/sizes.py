# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sizes: the one place that knows what "200GiB", "1.5T" or "100GB" mean.

The units are Slurm's (burst buffer guide): a bare letter or an ``iB`` suffix
counts in powers of 1024 (K, KiB ... P, PiB); a ``B`` suffix counts in powers
of 1000 (KB ... PB). A bare number is bytes. Used by the modules, by bbctl's
directive parser and by the test bed, so all three agree.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

_PREFIXES = "KMGTP"
# ASCII only: in Unicode mode \d reads Arabic-Indic digits and IGNORECASE matches the Kelvin sign as "k".
_SIZE_RE = re.compile(r"^\s*(\d+)(?:\.(\d+))?\s*([KMGTP](?:iB|B)?|B)?\s*$", re.IGNORECASE | re.ASCII)
# Significant digits read at most: 10**40 bytes is beyond any storage (and int() refuses over 4300 digits).
_MAX_DIGITS = 40


class SizeError(ValueError):
    """A size that cannot be read; the message names the bad text."""


def parse_size(text):
    """Bytes in ``text`` (str or int), rounded up to a whole byte.

    Computed in whole numbers: a float would make "0.067GB" 67000001 bytes.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise SizeError("size %d is negative" % text)
        return text
    match = _SIZE_RE.match(str(text))
    if not match:
        raise SizeError(
            "cannot read size %r: use a number with an optional unit "
            "K, M, G, T, P (or KiB..PiB: powers of 1024) or KB..PB (powers of 1000)" % (text,))
    whole, fraction, unit = match.group(1).lstrip("0"), (match.group(2) or "").rstrip("0"), match.group(3)
    if len(whole) + len(fraction) > _MAX_DIGITS:
        raise SizeError("cannot read size %r: more than %d significant digits" % (text, _MAX_DIGITS))
    scaled = int(whole + fraction or "0") * _multiplier(unit or "")
    return -(-scaled // 10 ** len(fraction))  # rounded up


def _multiplier(unit):
    unit = unit.upper()
    if unit in ("", "B"):
        return 1
    power = _PREFIXES.index(unit[0]) + 1
    base = 1000 if unit.endswith("B") and not unit.endswith("IB") else 1024
    return base ** power


def format_size(nbytes):
    """The largest exact binary unit: 4294967296 -> '4GiB', 1500 -> '1500'."""
    for power in range(len(_PREFIXES), 0, -1):
        unit = 1024 ** power
        if nbytes and nbytes % unit == 0:
            return "%d%siB" % (nbytes // unit, _PREFIXES[power - 1])
    return str(nbytes)


def describe_size(nbytes):
    """For people reading a log: 1536 -> '1.5 KiB', 1023 -> '1023 B' (never parsed back)."""
    value, unit = float(nbytes), "B"
    for larger in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return "%d B" % nbytes if unit == "B" else "%.1f %s" % (value, unit)
