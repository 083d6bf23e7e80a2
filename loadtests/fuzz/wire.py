"""The protobuf wire format, written field by field.

Written by hand on purpose: protobuf's own serializers only write well-formed
messages (valid UTF-8 in strings, each field with its declared wire type, values
in range), and the fuzzer must also send what they refuse to write. This is the
encoding of https://protobuf.dev/programming-guides/encoding/, nothing more: a
varint, a tag, and the four payloads a field can have."""

from __future__ import annotations

import struct

VARINT = 0
I64 = 1
LEN = 2
I32 = 5
#: Every wire type a field can be written with (3 and 4, groups, are deprecated
#: but still parsed, so they are worth sending too).
WIRE_TYPES = (VARINT, I64, LEN, 3, 4, I32)

_U64 = (1 << 64) - 1


def varint(value: int) -> bytes:
    """Base-128 varint of `value` taken as an unsigned 64-bit number (a negative
    int32 or int64 is ten bytes, as protobuf writes it)."""
    value &= _U64
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def zigzag(value: int, bits: int) -> int:
    """The sint32/sint64 encoding of `value`."""
    return ((value << 1) ^ (value >> (bits - 1))) & ((1 << bits) - 1)


def tag(number: int, wire_type: int) -> bytes:
    return varint((number << 3) | wire_type)


def field_varint(number: int, value: int) -> bytes:
    return tag(number, VARINT) + varint(value)


def field_len(number: int, payload: bytes) -> bytes:
    return tag(number, LEN) + varint(len(payload)) + payload


def field_fixed(number: int, payload: bytes) -> bytes:
    """A 4-byte (I32) or 8-byte (I64) field; `payload` says which."""
    if len(payload) not in (4, 8):
        raise ValueError("a fixed-width payload has 4 or 8 bytes")
    return tag(number, I32 if len(payload) == 4 else I64) + payload


def float32(value: float) -> bytes:
    return struct.pack("<f", value)


def float64(value: float) -> bytes:
    return struct.pack("<d", value)


def fixed32(value: int, *, signed: bool) -> bytes:
    return struct.pack("<i" if signed else "<I", value)


def fixed64(value: int, *, signed: bool) -> bytes:
    return struct.pack("<q" if signed else "<Q", value)
