"""The PII detector: each type with exact offsets, checksums, negatives, overlaps, redaction."""

from __future__ import annotations

import itertools

import pytest

from services.guardrail.pii import (
    IBAN_LENGTHS,
    PiiFinding,
    PiiType,
    find_pii,
    iban_valid,
    luhn_valid,
    redact,
)


def spans(text: str) -> list[tuple[PiiType, str]]:
    return [(f.type, text[f.start : f.end]) for f in find_pii(text)]


def only(text: str, pii_type: PiiType, value: str) -> None:
    """``text`` holds exactly one finding: ``value``, of ``pii_type``, at its index."""
    start = text.index(value)
    assert find_pii(text) == [PiiFinding(pii_type, start, start + len(value))]


# --- offsets are code points ------------------------------------------------------


def test_offsets_are_code_points_after_non_ascii_text() -> None:
    text = "Señor Müller 👋 — écrivez à ana.garcía@example.com? non: ana.garcia@example.com"
    findings = find_pii(text)
    assert findings == [PiiFinding(PiiType.EMAIL, 56, 78)]
    assert text[56:78] == "ana.garcia@example.com"
    # the emoji is one code point (two UTF-16 units, four UTF-8 bytes)
    assert len("Señor Müller 👋 — écrivez à ana.garcía@example.com? non: ") == 56


def test_every_type_with_exact_offsets() -> None:
    text = (
        "日本語 mail: bob@example.org, tel +34 612 345 678, card 4111 1111 1111 1111, "
        "IBAN DE89 3704 0044 0532 0130 00, ip 10.0.0.1 or 2001:db8::1."
    )
    assert find_pii(text) == [
        PiiFinding(PiiType.EMAIL, 10, 25),
        PiiFinding(PiiType.PHONE_NUMBER, 31, 46),
        PiiFinding(PiiType.PAYMENT_CARD, 53, 72),
        PiiFinding(PiiType.IBAN, 79, 106),
        PiiFinding(PiiType.IP_ADDRESS, 111, 119),
        PiiFinding(PiiType.IP_ADDRESS, 123, 134),
    ]
    assert [text[f.start : f.end] for f in find_pii(text)] == [
        "bob@example.org",
        "+34 612 345 678",
        "4111 1111 1111 1111",
        "DE89 3704 0044 0532 0130 00",
        "10.0.0.1",
        "2001:db8::1",
    ]


def test_empty_and_plain_text() -> None:
    assert find_pii("") == []
    assert find_pii("Hola, ¿qué tal? The weather is nice today.") == []


def test_finding_is_frozen_value() -> None:
    finding = PiiFinding(PiiType.EMAIL, 1, 5)
    assert finding == PiiFinding(PiiType.EMAIL, 1, 5)
    with pytest.raises(AttributeError):
        finding.start = 2  # type: ignore[misc]
    assert PiiType.PHONE_NUMBER.value == "phone_number"


# --- emails -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "email",
    [
        "john.doe@example.com",
        "j.o-h_n+tag@mail.example.co.uk",
        "ANA@EJEMPLO.ES",
        "o'brien@example.ie",
        "x@sub-domain.example.museum",
    ],
)
def test_emails_found(email: str) -> None:
    only(f"Escríbeme a {email} mañana", PiiType.EMAIL, email)


def test_email_without_trailing_dot_or_brackets() -> None:
    only("Contact: <info@example.com>.", PiiType.EMAIL, "info@example.com")
    only("Write to sales@example.com.", PiiType.EMAIL, "sales@example.com")
    only("(mailto:help@example.org)", PiiType.EMAIL, "help@example.org")


@pytest.mark.parametrize(
    "text",
    [
        "follow @handle on social media",
        "user@ is not an address",
        "foo@bar without a domain suffix",
        "a@b.c has a one-letter TLD",
        "double dot john..doe@ also",
        "me@localhost",
        "price 3@5 each",
        "user@-example.com",
    ],
)
def test_email_negatives(text: str) -> None:
    assert [t for t, _ in spans(text) if t is PiiType.EMAIL] == []


def test_two_emails() -> None:
    text = "cc a@example.com;b@example.net"
    assert spans(text) == [(PiiType.EMAIL, "a@example.com"), (PiiType.EMAIL, "b@example.net")]


# --- phone numbers ------------------------------------------------------------------


@pytest.mark.parametrize(
    "phone",
    [
        "(555) 123-4567",
        "555-123-4567",
        "555.123.4567",
        "612 345 678",
        "06 12 34 56 78",
        "020 7946 0958",
        "1-800-555-1234",
        "+1 (555) 123-4567",
        "+44 20 7946 0958",
        "+34612345678",
        "+33 6 12 34 56 78",
        "+49 (0)30 1234567",
        "+1.555.123.4567",
        "+351 912-345-678",
    ],
)
def test_phones_found(phone: str) -> None:
    only(f"Llámame al {phone}, gracias", PiiType.PHONE_NUMBER, phone)


def test_phone_at_start_and_end() -> None:
    assert find_pii("612 345 678") == [PiiFinding(PiiType.PHONE_NUMBER, 0, 11)]
    assert spans("call 555-123-4567.") == [(PiiType.PHONE_NUMBER, "555-123-4567")]


@pytest.mark.parametrize(
    "text",
    [
        "Born in 1987, moved in 2024.",
        "The meeting is on 2024-01-15 at 10:30.",
        "Due 2024-01-15 10:30:00 UTC",
        "15/01/2024 and 01.02.2024",
        "Upgrade from 1.2.3 to 10.15.7 today",
        "Windows build 10.0.19041.1234",
        "It costs $1,234,567.89 or 1.299,99 €",
        "Revenue was 1 234 567 890 € last year",
        "Growth of 123 456 789 % is absurd",
        "Order #123-456-789 shipped",
        "Order number 123456789012 shipped",
        "ISBN 978-3-16-148410-0",
        "pi is 3.14159265358979",
        "Years 2019 2020 2021 were hard",
        "Server 192.168.100.200 is down",
        "Score 3-2, time 12:30:45",
        "+12 is not a phone",
        "+1234567",
    ],
)
def test_phone_negatives(text: str) -> None:
    assert [t for t, _ in spans(text) if t is PiiType.PHONE_NUMBER] == []


def test_phone_run_touching_other_digits_is_rejected() -> None:
    assert spans("ref 555-123-4567/89") == []
    assert spans("ref 555-123-4567,5") == []
    assert spans("id555-123-4567") == []
    assert spans("555-123-4567@example") == []


# --- payment cards --------------------------------------------------------------------


@pytest.mark.parametrize(
    "card",
    [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        "5555555555554444",
        "5555 5555 5555 4444",
        "2223003122003222",  # Mastercard 2-series
        "378282246310005",  # Amex
        "3782 822463 10005",
        "6011111111111117",  # Discover
        "4222222222222",  # Visa, 13 digits
        "3530111333300000",  # JCB: another issuer, 16 digits
    ],
)
def test_cards_found(card: str) -> None:
    only(f"Mi tarjeta es {card}.", PiiType.PAYMENT_CARD, card)


@pytest.mark.parametrize(
    "text",
    [
        "bad checksum 4111 1111 1111 1112",
        "order 1234567890123456",
        "order 1234-5678-9012-3456",
        "Amex prefix with 16 digits 3782822463100050",
        "Mastercard length 555555555555444",
        "zeros 0000000000000000",
        "unknown issuer with 15 digits 123456789012347",
        "decimal 4111111111111111.5",
        "inside a word X4111111111111111",
        "mixed separators 4111 1111-1111 1111",
        "longer number 4111 1111 1111 1111 2222",
        "longer number 1234 4111 1111 1111 1111",
    ],
)
def test_card_negatives(text: str) -> None:
    assert [t for t, _ in spans(text) if t is PiiType.PAYMENT_CARD] == []


def test_card_failing_luhn_is_not_a_phone_either() -> None:
    assert spans("ticket 4111 1111 1111 1112 and 4111 1111 1111") == []


@pytest.mark.parametrize(
    ("digits", "valid"),
    [
        ("4111111111111111", True),
        ("4111 1111 1111 1111", True),
        ("5555-5555-5555-4444", True),
        ("378282246310005", True),
        ("79927398713", True),
        ("4111111111111112", False),
        ("79927398710", False),
        ("", False),
        ("0", False),
        ("12a4", False),
        ("4111１111111111111", False),  # fullwidth digit
    ],
)
def test_luhn(digits: str, valid: bool) -> None:
    assert luhn_valid(digits) is valid


# --- IBANs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "iban",
    [
        "GB82 WEST 1234 5698 7654 32",
        "GB82WEST12345698765432",
        "DE89 3704 0044 0532 0130 00",
        "DE89370400440532013000",
        "ES91 2100 0418 4502 0005 1332",
        "ES9121000418450200051332",
        "FR14 2004 1010 0505 0001 3M02 606",
        "NL91 ABNA 0417 1643 00",
        "BE68 5390 0754 7034",
        "CH93 0076 2011 6238 5295 7",
        "gb82 west 1234 5698 7654 32",
    ],
)
def test_ibans_found(iban: str) -> None:
    assert iban_valid(iban)
    only(f"Transfiere a {iban} hoy.", PiiType.IBAN, iban)


def test_iban_followed_by_short_word() -> None:
    only("pay BE68 5390 0754 7034 from now on", PiiType.IBAN, "BE68 5390 0754 7034")


@pytest.mark.parametrize(
    "candidate",
    [
        "GB82 WEST 1234 5698 7654 33",  # checksum
        "DE89 3704 0044 0532 0130 01",
        "DE89370400440532013000 00",  # length for DE
        "DE8937040044053201300",
        "ES91 2100 0418 4502 0005 133",
        "XX00 1234 5678 9012 3",  # check digits 00
        "GB82-WEST-1234-5698-7654-32",
        "1282 WEST 1234 5698 7654 32",
        "GB82 WEST 1234 5698 7654 3Ü",
        "",
    ],
)
def test_iban_invalid(candidate: str) -> None:
    assert not iban_valid(candidate)


def test_iban_country_lengths() -> None:
    required = {
        "DE": 22, "ES": 24, "FR": 27, "GB": 22, "IT": 27, "NL": 18, "BE": 16, "PT": 25,
        "CH": 21, "AT": 20, "IE": 22, "PL": 28, "SE": 24, "NO": 15, "DK": 18, "FI": 18,
        "LU": 20,
    }  # fmt: skip
    for country, length in required.items():
        assert IBAN_LENGTHS[country] == length


def test_iban_unknown_country_accepts_15_to_34() -> None:
    # Build a valid IBAN for a country outside the table by computing the check digits.
    def make(country: str, bban: str) -> str:
        numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
        return f"{country}{98 - int(numeric) % 97:02d}{bban}"

    assert "ZZ" not in IBAN_LENGTHS
    assert iban_valid(make("ZZ", "12345678901"))  # 15
    assert iban_valid(make("ZZ", "1" * 30))  # 34
    assert not iban_valid(make("ZZ", "1234567890"))  # 14
    assert not iban_valid(make("ZZ", "1" * 31))  # 35
    assert not iban_valid(make("DE", "1234567890123456789"))  # DE is 22, this is 23


def test_iban_checksum_failure_not_found() -> None:
    assert spans("IBAN GB82 WEST 1234 5698 7654 33") == []


# --- IP addresses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "192.168.1.1",
        "8.8.8.8",
        "255.255.255.255",
        "0.0.0.0",
        "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        "2001:db8::8a2e:370:7334",
        "::1",
        "fe80::",
        "::ffff:192.0.2.128",
        "64:ff9b::192.0.2.33",
    ],
)
def test_ip_addresses_found(address: str) -> None:
    only(f"El servidor {address} no responde", PiiType.IP_ADDRESS, address)


def test_ip_with_port_cidr_brackets_and_sentence_end() -> None:
    assert spans("connect to 10.1.2.3:8080") == [(PiiType.IP_ADDRESS, "10.1.2.3")]
    assert spans("range 10.0.0.0/8") == [(PiiType.IP_ADDRESS, "10.0.0.0")]
    assert spans("url http://[2001:db8::1]:443/") == [(PiiType.IP_ADDRESS, "2001:db8::1")]
    assert spans("It was 172.16.0.5.") == [(PiiType.IP_ADDRESS, "172.16.0.5")]


@pytest.mark.parametrize(
    "text",
    [
        "bad octet 999.1.1.1",
        "bad octet 256.1.1.1",
        "version 1.2.3.4.5",
        "version 1.2.3",
        "prefixed v1.2.3.4",
        "leading zeros 01.02.03.04",
        "time 12:30:45",
        "mac 00:1A:2B:3C:4D:5E",
        "C++ std::vector and Foo::bar",
        "ratio 3:2:1",
        "too many groups 1:2:3:4:5:6:7:8:9",
        "two gaps 2001::db8::1",
        "just colons :: here",
    ],
)
def test_ip_negatives(text: str) -> None:
    assert [t for t, _ in spans(text) if t is PiiType.IP_ADDRESS] == []


def test_embedded_ipv4_is_one_ipv6_finding() -> None:
    text = "mapped ::ffff:10.0.0.1 here"
    assert spans(text) == [(PiiType.IP_ADDRESS, "::ffff:10.0.0.1")]


# --- overlaps ------------------------------------------------------------------------


def test_card_wins_over_phone() -> None:
    # 15 digits grouped 4-6-5: could be read as a phone run; the card wins.
    text = "pay with 3782 822463 10005 now"
    assert spans(text) == [(PiiType.PAYMENT_CARD, "3782 822463 10005")]


def test_iban_wins_over_phone_inside_it() -> None:
    text = "cuenta ES91 2100 0418 4502 0005 1332"
    assert spans(text) == [(PiiType.IBAN, "ES91 2100 0418 4502 0005 1332")]


def test_ip_wins_over_phone() -> None:
    assert spans("host 192.168.100.200") == [(PiiType.IP_ADDRESS, "192.168.100.200")]


def test_findings_sorted_and_disjoint() -> None:
    text = (
        "+1 (555) 123-4567 a@b.io 5555555555554444 GB82WEST12345698765432 "
        "::1, 612 345 678, 1.1.1.1 x@y.org"
    )
    findings = find_pii(text)
    assert [f.type for f in findings] == [
        PiiType.PHONE_NUMBER,
        PiiType.EMAIL,
        PiiType.PAYMENT_CARD,
        PiiType.IBAN,
        PiiType.IP_ADDRESS,
        PiiType.PHONE_NUMBER,
        PiiType.IP_ADDRESS,
        PiiType.EMAIL,
    ]
    for before, after in itertools.pairwise(findings):
        assert before.end <= after.start


# --- redaction -----------------------------------------------------------------------


def test_redact_round_trip() -> None:
    text = "Ñandú: write ana@example.com, call 612 345 678, card 4111111111111111. ¡Gracias!"
    findings = find_pii(text)
    redacted = redact(text, findings)
    assert redacted == ("Ñandú: write [email], call [phone_number], card [payment_card]. ¡Gracias!")
    assert find_pii(redacted) == []
    # the text between findings is kept verbatim
    pieces = [text[: findings[0].start]]
    pieces += [text[a.end : b.start] for a, b in itertools.pairwise(findings)]
    pieces.append(text[findings[-1].end :])
    for piece in pieces:
        assert piece in redacted


def test_redact_custom_mask_and_order() -> None:
    text = "a@example.com y 10.0.0.1"
    findings = list(reversed(find_pii(text)))
    assert redact(text, findings, mask="<{type}>") == "<email> y <ip_address>"
    assert redact(text, findings, mask="***") == "*** y ***"
    assert redact(text, []) == text


def test_redact_rejects_overlap_and_out_of_range() -> None:
    with pytest.raises(ValueError, match="overlaps"):
        redact("abcdef", [PiiFinding(PiiType.EMAIL, 0, 4), PiiFinding(PiiType.EMAIL, 2, 5)])
    with pytest.raises(ValueError, match="outside"):
        redact("abc", [PiiFinding(PiiType.EMAIL, 1, 9)])


# --- pathological input ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "1." * 50_000,
        "1" * 100_000,
        "1 " * 50_000,
        "12-" * 33_000,
        "1:" * 50_000,
        "a." * 50_000,
        "a@" * 50_000,
        "AB12 " * 20_000,
        "(1) " * 25_000,
        "+1 " * 33_000,
        "1234 " * 20_000,
        ("9" * 40 + ".") * 2_500,
        "x" * 100_000 + "@example.com",
    ],
)
def test_pathological_inputs_return(text: str) -> None:
    findings = find_pii(text)
    assert isinstance(findings, list)


def test_many_findings_in_a_long_text() -> None:
    text = "mail a@example.com or 10.0.0.1; " * 2_000
    findings = find_pii(text)
    assert len(findings) == 4_000
