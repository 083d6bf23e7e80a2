"""Personal data detection: emails, phone numbers, payment cards, IBANs and IP addresses.

Stdlib only. Each type has a precompiled candidate pattern with every repetition
capped and left/right boundary checks, so a scan costs time linear in the text;
candidates are then validated in Python (Luhn, ISO 13616 mod-97, ``ipaddress``,
phone-number shape rules). Offsets are Python ``str`` indices (Unicode code
points), ``[start, end)``, as the guardrail API reports them.
"""

from __future__ import annotations

import bisect
import enum
import ipaddress
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = [
    "IBAN_LENGTHS",
    "PiiFinding",
    "PiiType",
    "find_pii",
    "iban_valid",
    "luhn_valid",
    "redact",
]


class PiiType(enum.Enum):
    """Kinds of personal data; values are the names used in masks and logs."""

    EMAIL = "email"
    PHONE_NUMBER = "phone_number"
    PAYMENT_CARD = "payment_card"
    IBAN = "iban"
    IP_ADDRESS = "ip_address"


@dataclass(frozen=True, slots=True)
class PiiFinding:
    """One piece of personal data at ``text[start:end]`` (code point offsets)."""

    type: PiiType
    start: int
    end: int


# IBAN lengths per country (ISO 13616 registry). Countries not listed are
# accepted with any length from 15 to 34.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AT": 20, "BE": 16, "BG": 22, "BR": 29, "CH": 21, "CY": 28,
    "CZ": 24, "DE": 22, "DK": 18, "EE": 20, "ES": 24, "FI": 18, "FR": 27, "GB": 22,
    "GI": 23, "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31, "NL": 18, "NO": 15,
    "PL": 28, "PT": 25, "RO": 24, "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
    "TR": 26, "VA": 22,
}  # fmt: skip

_IBAN_MIN, _IBAN_MAX = 15, 34

# --- candidate patterns --------------------------------------------------------
# Left boundaries are single-character lookbehinds, so a candidate can only start
# where a token starts: a long run of digits, dots or letters is tried once, not
# at every position. Every repetition has an upper bound.

_LOCAL_CHARS = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_EMAIL = re.compile(
    r"(?<![\w!#$%&'*+/=?^`{|}~.@-])"
    rf"{_LOCAL_CHARS}{{1,64}}(?:\.{_LOCAL_CHARS}{{1,64}}){{0,10}}"
    r"@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,10}"
    r"[A-Za-z]{2,63}"
    r"(?![\w@-]|\.\w)"
)

_IPV4 = re.compile(r"(?<![\w.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?!\w|\.\w)")
_IPV6 = re.compile(
    r"(?<![\w:.])"
    r"(?:[0-9A-Fa-f]{0,4}:){2,7}"
    r"(?:(?:[0-9]{1,3}\.){3}[0-9]{1,3}|[0-9A-Fa-f]{1,4})?"
    r"(?![\w:]|\.\w)"
)

# Compact (DE89370400440532013000) or grouped by single spaces every 4 characters.
_IBAN = re.compile(
    r"(?<![\w-])"
    r"[A-Za-z]{2}[0-9]{2}"
    r"(?:[A-Za-z0-9]{11,30}|(?:[ ][A-Za-z0-9]{4}){2,7}(?:[ ][A-Za-z0-9]{1,4})?)"
    r"(?!\w)"
)
_IBAN_SHAPE = re.compile(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}", re.ASCII)

# Cards: 13-19 digits compact, or in the usual groupings with one kind of
# separator: 4-4-4-1..4(-1..3) and 4-6-4/5 (Amex, Diners). A grouped number that
# continues with more digit groups is part of a longer number and not a card.
_CARD_COMPACT = re.compile(r"(?<![\w.,+-])[0-9]{13,19}(?![\w-]|[.,][0-9])")
_CARD_GROUPED = re.compile(
    r"(?<![\w.,+-])(?<![0-9][ -])"
    r"[0-9]{4}(?P<sep>[ -])"
    r"(?:[0-9]{4}(?P=sep)[0-9]{4}(?P=sep)[0-9]{1,4}(?:(?P=sep)[0-9]{1,3})?"
    r"|[0-9]{6}(?P=sep)[0-9]{4,5})"
    r"(?![\w-]|[.,][0-9]|[ -][0-9])"
)

# Phones: an optional '+', then up to 8 digit groups separated by one space, dash
# or dot, with at most one group in parentheses. The whole run is judged by
# _phone_ok; a run touching letters, '@', or other digits through '.,:/-' is not
# a phone number.
_PHONE_ITEM = r"(?:\([0-9]{1,5}\)|[0-9]{1,12})"
_PHONE = re.compile(
    r"(?<![\w+@#$€£¥/.,:-])"
    r"(?:\+[ ]?)?"
    r"(?:\([0-9]{1,5}\)|[0-9]{1,15})"
    rf"(?:(?:[ .-]|(?<=\))[ ]?|[ ]?(?=\()){_PHONE_ITEM}){{0,7}}"
    r"(?![\w@]|[.,:/-][0-9])"
)
_PHONE_TOKEN = re.compile(r"\(([0-9]+)\)|([0-9]+)|([ .-])")
_CURRENCY = frozenset("$€£¥%")


# --- validators -------------------------------------------------------------------


def luhn_valid(digits: str) -> bool:
    """Whether ``digits`` passes the Luhn checksum.

    Spaces and dashes are ignored; anything else that is not an ASCII digit, or
    fewer than two digits, gives False.
    """
    compact = digits.replace(" ", "").replace("-", "")
    if len(compact) < 2 or not compact.isascii() or not compact.isdigit():
        return False
    total = 0
    for index, char in enumerate(reversed(compact)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    """Whether ``candidate`` is a valid IBAN (ISO 13616), case-insensitively.

    Spaces are ignored. Checks the shape (country code, two check digits in
    02..98, an alphanumeric BBAN), the length (per country for those in
    :data:`IBAN_LENGTHS`, 15..34 for others) and the mod-97 checksum.
    """
    compact = candidate.replace(" ", "").upper()
    if not _IBAN_SHAPE.fullmatch(compact):
        return False
    expected = IBAN_LENGTHS.get(compact[:2])
    if expected is None:
        if not _IBAN_MIN <= len(compact) <= _IBAN_MAX:
            return False
    elif len(compact) != expected:
        return False
    if not 2 <= int(compact[2:4]) <= 98:
        return False
    remainder = 0
    for char in compact[4:] + compact[:4]:
        if char.isdigit():
            remainder = (remainder * 10 + ord(char) - 48) % 97
        else:
            remainder = (remainder * 100 + ord(char) - 55) % 97
    return remainder == 1


def _card_ok(digits: str) -> bool:
    """Luhn plus issuer prefix and length."""
    length = len(digits)
    if not 13 <= length <= 19 or digits[0] == "0" or not luhn_valid(digits):
        return False
    two, three, four = int(digits[:2]), int(digits[:3]), int(digits[:4])
    if digits[0] == "4":  # Visa
        return length in (13, 16, 19)
    if 51 <= two <= 55 or 2221 <= four <= 2720:  # Mastercard
        return length == 16
    if two in (34, 37):  # American Express
        return length == 15
    if four == 6011 or two == 65 or 644 <= three <= 649:  # Discover
        return 16 <= length <= 19
    return length == 16


def _is_year(group: str) -> bool:
    return len(group) == 4 and 1900 <= int(group) <= 2099


def _phone_parts(candidate: str) -> tuple[list[str], list[int], set[str]]:
    """Digit groups, indexes of the parenthesised groups, and the separators used."""
    groups: list[str] = []
    parens: list[int] = []
    separators: set[str] = set()
    for match in _PHONE_TOKEN.finditer(candidate):
        in_parens, plain, separator = match.groups()
        if in_parens is not None:
            parens.append(len(groups))
            groups.append(in_parens)
        elif plain is not None:
            groups.append(plain)
        elif separator is not None:
            separators.add(separator)
    return groups, parens, separators


def _phone_ok(candidate: str) -> bool:
    """Shape rules for a phone-number run matched by ``_PHONE``."""
    groups, parens, separators = _phone_parts(candidate)
    digits = sum(len(group) for group in groups)
    if len(parens) > 1 or ("." in separators and len(separators) > 1):
        return False
    if candidate.startswith("+"):
        return 8 <= digits <= 15 and groups[0][0] != "0"
    return 9 <= digits <= 15 and _national_ok(groups, parens, separators)


def _national_ok(groups: list[str], parens: list[int], separators: set[str]) -> bool:
    """National formats: ``(555) 123-4567``, ``555-123-4567``, ``612 345 678``, ..."""
    first = groups[0]
    lengths = [len(group) for group in groups]
    dotted = "." in separators
    rejected = (
        len(groups) < 2,
        bool(parens) and parens[0] > 1,
        lengths[0] > 5 or any(not 2 <= n <= 8 for n in lengths[1:]),
        # two groups only with a trunk prefix or an area code: 030 1234567, (030) 1234567
        len(groups) == 2 and not (first.startswith("0") or parens),
        lengths[:3] == [4, 4, 4] or lengths[:2] == [4, 6],  # card-like grouping
        dotted and (len(groups) < 3 or max(lengths) > 4),  # versions, decimals
        dotted and len(groups) == 4 and max(lengths) <= 3,  # IPv4-like
        _is_year(first) and bool(separators & {"-", "."}),  # dates: 2024-01-15
        all(_is_year(group) for group in groups),  # lists of years
    )
    return not any(rejected)


def _near_currency(text: str, start: int, end: int) -> bool:
    """A price: a currency or percent sign right before or after (one space allowed)."""
    before = text[max(0, start - 2) : start].rstrip()
    after = text[end : end + 2].lstrip()
    return bool(before and before[-1] in _CURRENCY) or bool(after and after[0] in _CURRENCY)


# --- scanners ------------------------------------------------------------------


def _emails(text: str) -> Iterator[PiiFinding]:
    for match in _EMAIL.finditer(text):
        yield PiiFinding(PiiType.EMAIL, match.start(), match.end())


def _ip_addresses(text: str) -> Iterator[PiiFinding]:
    for match in _IPV4.finditer(text):
        try:
            ipaddress.IPv4Address(match.group())
        except ValueError:
            continue
        yield PiiFinding(PiiType.IP_ADDRESS, match.start(), match.end())
    for match in _IPV6.finditer(text):
        value = match.group()
        if value.count(":") < 2 or not any(c not in ":." for c in value):
            continue
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            continue
        yield PiiFinding(PiiType.IP_ADDRESS, match.start(), match.end())


def _ibans(text: str) -> Iterator[PiiFinding]:
    for match in _IBAN.finditer(text):
        groups = match.group().split(" ")
        # A grouped candidate may run into a following word of 1-4 characters:
        # try the longest prefix of whole groups that is a valid IBAN.
        for count in range(len(groups), 0, -1):
            kept = groups[:count]
            if len("".join(kept)) < _IBAN_MIN:
                break
            if iban_valid("".join(kept)):
                end = match.start() + len(" ".join(kept))
                yield PiiFinding(PiiType.IBAN, match.start(), end)
                break


def _cards(text: str) -> Iterator[PiiFinding]:
    for pattern in (_CARD_COMPACT, _CARD_GROUPED):
        for match in pattern.finditer(text):
            digits = match.group().replace(" ", "").replace("-", "")
            if _card_ok(digits):
                yield PiiFinding(PiiType.PAYMENT_CARD, match.start(), match.end())


def _phones(text: str) -> Iterator[PiiFinding]:
    for match in _PHONE.finditer(text):
        start, end = match.span()
        if _phone_ok(match.group()) and not _near_currency(text, start, end):
            yield PiiFinding(PiiType.PHONE_NUMBER, start, end)


# Phones are the least specific: a card, IBAN, email or IP address overlapping a
# phone candidate wins. Within a rank the longer finding wins, then the earlier.
_RANK: dict[PiiType, int] = {
    PiiType.EMAIL: 1,
    PiiType.PAYMENT_CARD: 1,
    PiiType.IBAN: 1,
    PiiType.IP_ADDRESS: 1,
    PiiType.PHONE_NUMBER: 0,
}


def _resolve(candidates: list[PiiFinding]) -> list[PiiFinding]:
    """Non-overlapping findings sorted by start, keeping the best of each overlap."""
    ordered = sorted(
        set(candidates), key=lambda f: (-_RANK[f.type], f.start - f.end, f.start, f.type.value)
    )
    starts: list[int] = []
    kept: list[PiiFinding] = []
    for finding in ordered:
        index = bisect.bisect_right(starts, finding.start)
        if index > 0 and kept[index - 1].end > finding.start:
            continue
        if index < len(kept) and kept[index].start < finding.end:
            continue
        starts.insert(index, finding.start)
        kept.insert(index, finding)
    return kept


def find_pii(text: str) -> list[PiiFinding]:
    """All personal data in ``text``: sorted by start, non-overlapping.

    Where candidates overlap, cards, IBANs, emails and IP addresses win over
    phone numbers, and otherwise the longer one wins. National phone numbers
    need a separator (``612 345 678``, ``555-123-4567``); a bare run of digits
    is only a phone number after ``+``.
    """
    candidates: list[PiiFinding] = [
        *_emails(text),
        *_ibans(text),
        *_cards(text),
        *_ip_addresses(text),
        *_phones(text),
    ]
    return _resolve(candidates)


def redact(text: str, findings: Sequence[PiiFinding], mask: str = "[{type}]") -> str:
    """``text`` with each finding replaced by ``mask.format(type=<PiiType value>)``.

    ``find_pii(text)`` gives suitable findings; overlapping or out-of-range
    findings raise ValueError.
    """
    parts: list[str] = []
    position = 0
    for finding in sorted(findings, key=lambda f: (f.start, f.end)):
        if finding.start < position or finding.end < finding.start or finding.end > len(text):
            raise ValueError(f"finding {finding} overlaps another or is outside the text")
        parts.append(text[position : finding.start])
        parts.append(mask.format(type=finding.type.value))
        position = finding.end
    parts.append(text[position:])
    return "".join(parts)
