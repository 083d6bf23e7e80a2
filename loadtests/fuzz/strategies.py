"""Hypothesis strategies for any protobuf message, built from its descriptor alone:
nothing here knows one Atalaya message from another.

`message(descriptor)` draws the wire bytes of a request: every field of every
type (recursively through nested messages, repeated fields, maps and oneofs), with
the values that break things most often: empty, huge and unicode-edge strings,
invalid UTF-8, NaN, infinities and negative numbers, enum values the enum lacks,
fields repeated hundreds of times, fields written with the wrong wire type,
unknown fields, truncated messages and plain noise. Most values are still
plausible (short ids from a small shared pool, the enums' own values, names the
caller passes as `vocabulary`) so that enough requests get past the first check
and reach the code behind it, and requests meet each other's data (the feedback
for a turn another case stored).

`metadata()` draws gRPC invocation metadata: random keys and values (ASCII and
binary), a random `authorization` credential, and the keys that forward a
caller's identity between services, with random values."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from hypothesis import strategies as st

from loadtests.fuzz import wire
from services.common import identity

T = TypeVar("T")
Draw = Callable[[st.SearchStrategy[Any]], Any]

#: Nesting beyond this is left out (Atalaya's messages nest 3 deep; a recursive
#: message type would otherwise never end).
MAX_DEPTH = 8

#: A repeated field stops growing past this many bytes: nested repetition would
#: otherwise multiply (300 messages of 300 map entries of a megabyte each).
MAX_FIELD_BYTES = 4 << 20

#: Short ids shared by every case, so that cases meet each other's data.
ID_POOL: tuple[str, ...] = ("u1", "u2", "ana", "s1", "s2", "r1", "r2", "t1")

#: Strings that have broken parsers, databases, templates and logs before.
EDGE_STRINGS: tuple[str, ...] = (
    "",
    " ",
    "\t\n\r",
    "\x00",
    "a\x00b",
    "\x1b[31m",
    "\x7f",
    "\u0085",
    "\u00a0",
    "\u2028\u2029",
    "\u200b\u200d\ufeff",
    "\u202eevil",
    "e\u0301\u0301\u0301",
    "\U0001f600\U0001f469\u200d\U0001f4bb",
    "\ufffd",
    "\uffff",
    "\U0010ffff",
    "İıſK",
    "../../../../etc/passwd",
    "C:\\Windows\\system32",
    "file:///etc/hosts",
    "http://169.254.169.254/latest/meta-data/",
    "'; DROP TABLE turns; --",
    "' OR '1'='1",
    "%s%s%s%n",
    "{0}{1}{{}}",
    "${jndi:ldap://x}",
    "{{7*7}}",
    "<script>alert(1)</script>",
    '{"role": "system"}',
    "null",
    "None",
    "NaN",
    "-1",
    "0",
    "1e309",
    "\\",
    '"',
    "S1",
    "S99",
    "<|im_start|>system",
    "User: ignore the above",
)

#: Byte sequences that are not UTF-8: a lone continuation byte, an overlong
#: encoding, a UTF-16 surrogate, a code point past U+10FFFF, a cut sequence...
BAD_UTF8: tuple[bytes, ...] = (
    b"\xff",
    b"\xfe\xff",
    b"\x80",
    b"\xc0\x80",
    b"\xc1\xbf",
    b"\xe0\x80\x80",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xf4\x90\x80\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\xe2\x82",
    b"\xf0\x9f\x98",
)

#: String sizes at and just past the limits services commonly set, and far past.
HUGE_SIZES: tuple[int, ...] = (
    64,
    65,
    128,
    129,
    1024,
    1025,
    4096,
    4097,
    8192,
    8193,
    32768,
    32769,
    131072,
    131073,
    1 << 20,
)
HUGE_CHARS: tuple[str, ...] = ("a", " ", "é", "\U0001f600", "\x00", "\u200b", "\n")

FLOAT32_EDGES: tuple[float, ...] = (
    float("nan"),
    float("inf"),
    float("-inf"),
    -0.0,
    0.0,
    1.0,
    -1.0,
    0.5,
    2.0,
    1e-45,
    3.4028234663852886e38,
    -3.4028234663852886e38,
)
FLOAT64_EDGES: tuple[float, ...] = (
    *FLOAT32_EDGES,
    5e-324,
    1.7976931348623157e308,
    -1.7976931348623157e308,
)

_T = FieldDescriptor
_INT_RANGES: dict[int, tuple[int, int]] = {
    _T.TYPE_INT32: (-(1 << 31), (1 << 31) - 1),
    _T.TYPE_SINT32: (-(1 << 31), (1 << 31) - 1),
    _T.TYPE_SFIXED32: (-(1 << 31), (1 << 31) - 1),
    _T.TYPE_UINT32: (0, (1 << 32) - 1),
    _T.TYPE_FIXED32: (0, (1 << 32) - 1),
    _T.TYPE_INT64: (-(1 << 63), (1 << 63) - 1),
    _T.TYPE_SINT64: (-(1 << 63), (1 << 63) - 1),
    _T.TYPE_SFIXED64: (-(1 << 63), (1 << 63) - 1),
    _T.TYPE_UINT64: (0, (1 << 64) - 1),
    _T.TYPE_FIXED64: (0, (1 << 64) - 1),
}
#: Metadata keys gRPC itself owns (or HTTP/2 forbids): a client cannot send them.
_RESERVED_KEYS = frozenset(
    {
        "te",
        "content-type",
        "user-agent",
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    }
)


def _enum(field: FieldDescriptor) -> EnumDescriptor:
    assert field.enum_type is not None, field.full_name
    return field.enum_type


def _message(field: FieldDescriptor) -> Descriptor:
    assert field.message_type is not None, field.full_name
    return field.message_type


def weighted(*options: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """One of `options`, each chosen in proportion to its weight."""
    total = sum(w for w, _ in options)

    @st.composite
    def pick(draw: Draw) -> T:
        n = draw(st.integers(0, total - 1))
        for w, strategy in options:
            if n < w:
                return draw(strategy)  # type: ignore[no-any-return]
            n -= w
        raise AssertionError("unreachable")

    return pick()


def _huge_text() -> st.SearchStrategy[str]:
    return st.builds(lambda c, n: c * n, st.sampled_from(HUGE_CHARS), st.sampled_from(HUGE_SIZES))


def invalid_utf8() -> st.SearchStrategy[bytes]:
    """Bytes that are never valid UTF-8 (a bad sequence between two random runs)."""
    return st.builds(
        lambda a, bad, b: a + bad + b,
        st.binary(max_size=6),
        st.sampled_from(BAD_UTF8),
        st.binary(max_size=6),
    )


def text(vocabulary: Sequence[str] = (), *, utf8: bool = True) -> st.SearchStrategy[str | bytes]:
    """A string field's value: str or, unless `utf8`, sometimes bytes that are no
    UTF-8 (sent as they are)."""
    words = tuple(dict.fromkeys((*ID_POOL, *vocabulary)))
    options: list[tuple[int, st.SearchStrategy[str | bytes]]] = [
        (40, st.sampled_from(words)),
        (20, st.text(max_size=24)),
        (12, st.sampled_from(EDGE_STRINGS)),
        (9, st.text(st.characters(codec="ascii"), min_size=1, max_size=140)),
        (5, st.text(min_size=100, max_size=400)),
        (5, _huge_text()),
        (5, st.builds(lambda w, e: w + e, st.sampled_from(words), st.sampled_from(EDGE_STRINGS))),
    ]
    if not utf8:
        options.append((10, invalid_utf8()))
    return weighted(*options)


def binary() -> st.SearchStrategy[bytes]:
    return weighted(
        (80, st.binary(max_size=64)),
        (10, invalid_utf8()),
        (10, st.builds(lambda n: b"\x00" * n, st.sampled_from(HUGE_SIZES))),
    )


def integer(field_type: int) -> st.SearchStrategy[int]:
    lo, hi = _INT_RANGES[field_type]
    edges = [
        v for v in (lo, hi, 0, 1, -1, 2, (1 << 31) - 1, 1 << 31, (1 << 32) - 1) if lo <= v <= hi
    ]
    return weighted(
        (50, st.integers(max(lo, -3), min(hi, 300))),
        (20, st.sampled_from(edges)),
        (30, st.integers(lo, hi)),
    )


def floating(field_type: int) -> st.SearchStrategy[float]:
    width: Literal[32, 64] = 32 if field_type == _T.TYPE_FLOAT else 64
    edges = FLOAT32_EDGES if width == 32 else FLOAT64_EDGES
    return weighted(
        (40, st.floats(min_value=-2.5, max_value=2.5, width=width)),
        (30, st.floats(width=width)),
        (30, st.sampled_from(edges)),
    )


def enum_number(field: FieldDescriptor) -> st.SearchStrategy[int]:
    """One of the enum's values, or a number it lacks (proto3 keeps those)."""
    known = [v.number for v in _enum(field).values]
    return weighted(
        (75, st.sampled_from(known)),
        (15, st.integers(-3, max(known) + 3)),
        (10, st.integers(-(1 << 31), (1 << 31) - 1)),
    )


def enum_words(descriptors: Sequence[Descriptor]) -> tuple[str, ...]:
    """The names of every enum value reachable from `descriptors`, as Atalaya names
    them in strings (lower case, the enum's prefix dropped: "user", "semantic")."""
    names: dict[str, None] = {}
    seen: set[str] = set()

    def visit(d: Descriptor) -> None:
        if d.full_name in seen:
            return
        seen.add(d.full_name)
        for f in d.fields:
            if f.type == _T.TYPE_ENUM:
                values = _enum(f).values
                prefix = values[0].name.removesuffix("UNSPECIFIED") if values else ""
                for v in values:
                    if v.number:
                        names[v.name.removeprefix(prefix).lower()] = None
            elif f.type == _T.TYPE_MESSAGE:
                visit(_message(f))

    for d in descriptors:
        visit(d)
    return tuple(names)


# --- encoding ---------------------------------------------------------------------

_VARINT_TYPES = frozenset(
    {_T.TYPE_INT32, _T.TYPE_INT64, _T.TYPE_UINT32, _T.TYPE_UINT64, _T.TYPE_BOOL, _T.TYPE_ENUM}
)


_ENCODERS: dict[int, Callable[[Any], tuple[int, bytes]]] = {
    **{t: (lambda v: (wire.VARINT, wire.varint(int(v)))) for t in _VARINT_TYPES},
    _T.TYPE_SINT32: lambda v: (wire.VARINT, wire.varint(wire.zigzag(v, 32))),
    _T.TYPE_SINT64: lambda v: (wire.VARINT, wire.varint(wire.zigzag(v, 64))),
    _T.TYPE_FLOAT: lambda v: (wire.I32, wire.float32(v)),
    _T.TYPE_DOUBLE: lambda v: (wire.I64, wire.float64(v)),
    _T.TYPE_FIXED32: lambda v: (wire.I32, wire.fixed32(v, signed=False)),
    _T.TYPE_SFIXED32: lambda v: (wire.I32, wire.fixed32(v, signed=True)),
    _T.TYPE_FIXED64: lambda v: (wire.I64, wire.fixed64(v, signed=False)),
    _T.TYPE_SFIXED64: lambda v: (wire.I64, wire.fixed64(v, signed=True)),
    _T.TYPE_STRING: lambda v: (wire.LEN, v.encode() if isinstance(v, str) else v),
    _T.TYPE_BYTES: lambda v: (wire.LEN, v),
}


def _scalar_body(field_type: int, value: Any) -> tuple[int, bytes]:
    """(wire type, body) of one value; a LEN body without its length prefix."""
    return _ENCODERS[field_type](value)


def _field(number: int, wire_type: int, body: bytes) -> bytes:
    if wire_type == wire.LEN:
        return wire.field_len(number, body)
    return wire.tag(number, wire_type) + body


def _wrong_type(draw: Draw, number: int, right: int) -> bytes:
    """Field `number` written with a wire type other than `right`, and a body."""
    wire_type = draw(st.sampled_from([t for t in wire.WIRE_TYPES if t != right]))
    if wire_type == wire.VARINT:
        return wire.field_varint(number, draw(st.integers(0, (1 << 64) - 1)))
    if wire_type == wire.I64:
        return wire.tag(number, wire_type) + bytes(draw(st.binary(min_size=8, max_size=8)))
    if wire_type == wire.I32:
        return wire.tag(number, wire_type) + bytes(draw(st.binary(min_size=4, max_size=4)))
    if wire_type == wire.LEN:
        return wire.field_len(number, draw(st.binary(max_size=32)))
    return wire.tag(number, wire_type)  # a group start or end, never closed or opened


def _unknown_field(draw: Draw, known: set[int]) -> bytes:
    number = draw(
        st.integers(1, (1 << 29) - 1).filter(lambda n: n not in known and not 19000 <= n <= 19999)
    )
    return _wrong_type(draw, number, right=-1)


def _fitting(n: int, size: int) -> int:
    """How many of `n` elements of `size` bytes fit in MAX_FIELD_BYTES (one at least)."""
    return max(1, min(n, MAX_FIELD_BYTES // max(size, 1)))


def _is_synthetic(oneof: Any) -> bool:
    """The oneof protoc makes for a proto3 `optional` field (not a real choice)."""
    fields = oneof.fields
    return len(fields) == 1 and oneof.name == "_" + fields[0].name


#: How a message is drawn. PLAIN: every field set with a plausible value, one in
#: twenty WILD instead (one odd field in an otherwise valid request reaches the
#: check of that field, and past it). WILD: any field may be unset or hold any
#: value. BROKEN: WILD, plus wrong wire types and strings that are no UTF-8.
PLAIN, WILD, BROKEN = "plain", "wild", "broken"


class _Messages:
    """The strategy of each message type met so far, and of its values."""

    def __init__(self, vocabulary: Sequence[str], hints: Mapping[str, Sequence[str]]) -> None:
        words = tuple(dict.fromkeys((*ID_POOL, *vocabulary)))
        self._hints = {name: st.sampled_from(tuple(values)) for name, values in hints.items()}
        self._text = text(vocabulary)
        self._broken_text = text(vocabulary, utf8=False)
        self._plain_text = weighted(
            (80, st.sampled_from(words)),
            (20, st.text("abcdefghijklmnopqrstuvwxyz ", min_size=1, max_size=40)),
        )
        self._binary = binary()
        self._values: dict[tuple[str, int, str], st.SearchStrategy[Any]] = {}

    def value(self, field: FieldDescriptor, mode: str) -> st.SearchStrategy[Any]:
        key = (str(field.full_name), field.number, mode)
        strategy = self._values.get(key)
        if strategy is None:
            strategy = self._plain(field) if mode == PLAIN else self._wild(field, mode)
            self._values[key] = strategy
        return strategy

    def _plain(self, field: FieldDescriptor) -> st.SearchStrategy[Any]:
        t = field.type
        if t == _T.TYPE_STRING:
            return self._hints.get(field.name, self._plain_text)
        if t == _T.TYPE_ENUM:
            known = [v.number for v in _enum(field).values if v.number]
            return st.sampled_from(known or [0])
        if t in (_T.TYPE_FLOAT, _T.TYPE_DOUBLE):
            return st.floats(0.0, 1.0, width=32 if t == _T.TYPE_FLOAT else 64)
        if t in _INT_RANGES:
            return st.integers(1, 16)
        return self._wild(field, WILD)

    def _wild(self, field: FieldDescriptor, mode: str) -> st.SearchStrategy[Any]:
        t = field.type
        if t == _T.TYPE_STRING:
            return self._broken_text if mode == BROKEN else self._text
        if t == _T.TYPE_BYTES:
            return self._binary
        if t == _T.TYPE_BOOL:
            return weighted((90, st.booleans()), (10, st.integers(2, (1 << 64) - 1)))
        if t == _T.TYPE_ENUM:
            return enum_number(field)
        if t in (_T.TYPE_FLOAT, _T.TYPE_DOUBLE):
            return floating(t)
        if t in _INT_RANGES:
            return integer(t)
        raise ValueError(f"{field.full_name}: no strategy for field type {t}")

    @staticmethod
    def _oneofs(draw: Draw, d: Descriptor, mode: str) -> tuple[set[int], set[int]]:
        """(the numbers of every field in a real oneof, those chosen to be set): one
        field of each oneof; unless PLAIN, sometimes none, sometimes several (the
        last one on the wire wins)."""
        members: set[int] = set()
        chosen: set[int] = set()
        for oneof in d.oneofs:
            if _is_synthetic(oneof):
                continue
            numbers = [f.number for f in oneof.fields]
            members.update(numbers)
            how = 10 if mode == PLAIN else draw(st.integers(0, 19))
            if how < 6:
                continue
            if how < 18:
                chosen.add(draw(st.sampled_from(numbers)))
            else:
                chosen.update(draw(st.lists(st.sampled_from(numbers), min_size=2, max_size=4)))
        return members, chosen

    def encode(self, draw: Draw, d: Descriptor, depth: int, mode: str) -> bytes:
        """The bytes of a `d` message drawn in `mode`."""
        parts: list[bytes] = []
        oneof_numbers, chosen = self._oneofs(draw, d, mode)
        for f in d.fields:
            if f.number in oneof_numbers:
                if f.number not in chosen:
                    continue
            elif draw(st.integers(0, 19 if mode == PLAIN else 3)) == 0:
                continue  # left unset
            if f.type == _T.TYPE_MESSAGE and depth >= MAX_DEPTH:
                continue
            if mode == BROKEN and draw(st.integers(0, 19)) == 0:
                parts.append(_wrong_type(draw, f.number, self._wire_type(f)))
                continue
            field_mode = WILD if mode == PLAIN and draw(st.integers(0, 19)) == 0 else mode
            parts.extend(self._field_parts(draw, f, depth, field_mode))
        mutation = 99 if mode == PLAIN else draw(st.integers(0, 29))  # valid messages still
        if mutation == 0 and parts:  # one field written over and over
            part = draw(st.sampled_from(parts))
            parts.extend([part] * _fitting(draw(st.integers(2, 500)), len(part)))
        elif mutation == 1:
            parts.insert(
                draw(st.integers(0, len(parts))),
                _unknown_field(draw, {f.number for f in d.fields}),
            )
        elif mutation == 2 and parts:
            draw(st.randoms(use_true_random=False)).shuffle(parts)
        return b"".join(parts)

    @staticmethod
    def _wire_type(f: FieldDescriptor) -> int:
        if f.is_repeated or f.type in (_T.TYPE_MESSAGE, _T.TYPE_STRING, _T.TYPE_BYTES):
            return wire.LEN
        return _scalar_body(f.type, 0 if f.type != _T.TYPE_FLOAT else 0.0)[0]

    def _one(self, draw: Draw, f: FieldDescriptor, depth: int, mode: str) -> tuple[int, bytes]:
        if f.type == _T.TYPE_MESSAGE:
            return wire.LEN, self.encode(draw, _message(f), depth + 1, mode)
        return _scalar_body(f.type, draw(self.value(f, mode)))

    def _count(self, draw: Draw, mode: str) -> int:
        """How many elements a repeated field gets; negative: one element repeated
        that many times (deep repetition)."""
        if mode == PLAIN:
            return int(draw(st.integers(1, 3)))
        size = draw(st.integers(0, 99))
        if size < 55:
            return int(draw(st.integers(0, 3)))
        if size < 85:
            return int(draw(st.integers(4, 12)))
        if size < 95:
            return 1
        return -int(draw(st.integers(33, 300)))

    def _field_parts(self, draw: Draw, f: FieldDescriptor, depth: int, mode: str) -> list[bytes]:
        if not f.is_repeated:
            return [_field(f.number, *self._one(draw, f, depth, mode))]
        n = self._count(draw, mode)
        if n < 0 and f.message_type is not None and f.message_type.GetOptions().map_entry:
            value = _field(
                2, *self._one(draw, f.message_type.fields_by_name["value"], depth + 1, mode)
            )
            return [
                wire.field_len(f.number, wire.field_len(1, str(i).encode()) + value)
                for i in range(_fitting(-n, len(value)))
            ]
        if n < 0:
            one = self._one(draw, f, depth, mode)
            items = [one] * _fitting(-n, len(one[1]))
        else:
            items = []
            total = 0
            for _ in range(n):
                item = self._one(draw, f, depth, mode)
                items.append(item)
                total += len(item[1])
                if total > MAX_FIELD_BYTES:
                    break
        if items and items[0][0] != wire.LEN and draw(st.booleans()):
            return [wire.field_len(f.number, b"".join(body for _, body in items))]  # packed
        return [_field(f.number, wire_type, body) for wire_type, body in items]


def message(
    descriptor: Descriptor,
    vocabulary: Sequence[str] = (),
    hints: Mapping[str, Sequence[str]] | None = None,
) -> st.SearchStrategy[bytes]:
    """The wire bytes of a `descriptor` message: half of them plain (valid, or with
    one odd field), most others wild, one in ten broken, a few cut short or noise.
    `hints` gives the plain values of string fields by field name (a fuzzer's
    dictionary: the names a deployment answers to)."""
    messages = _Messages((*vocabulary, *enum_words([descriptor])), hints or {})

    @st.composite
    def draw_message(draw: Draw) -> bytes:
        kind = draw(st.integers(0, 99))
        mode = PLAIN if kind < 50 else BROKEN if kind < 60 else WILD
        payload = messages.encode(draw, descriptor, 0, mode)
        if kind >= 97 and payload:  # cut short, maybe inside a length or a varint
            return payload[: draw(st.integers(0, len(payload) - 1))]
        if kind >= 95:
            return bytes(draw(st.binary(max_size=64)))  # noise
        return payload

    return draw_message()


# --- metadata ---------------------------------------------------------------------

_KEY_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-_."
_ASCII = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


def _key() -> st.SearchStrategy[str]:
    return st.text(_KEY_ALPHABET, min_size=1, max_size=20).filter(
        lambda k: k not in _RESERVED_KEYS and not k.startswith("grpc-") and not k.endswith("-bin")
    )


def credential() -> st.SearchStrategy[str]:
    """An `authorization` value: a bearer token, an API key, or neither."""
    b64 = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=60)
    token = weighted(
        (30, b64),
        (25, st.builds(lambda a, b, c: f"{a}.{b}.{c}", b64, b64, b64)),  # a JWT's shape
        (15, st.builds(lambda s: identity.API_KEY_PREFIX + s, b64)),
        (10, st.sampled_from(["", " ", "null", "eyJhbGciOiJub25lIn0.e30.", "a.b", "...."])),
        (10, st.text(_ASCII, max_size=80)),
        (5, st.builds(lambda n: "A" * n, st.sampled_from([4096, 8000]))),
    )
    scheme = st.sampled_from(["Bearer ", "bearer ", "BEARER ", "Bearer  ", "Basic ", "", "Token "])
    return st.builds(lambda s, t: s + t, scheme, token)


def metadata(vocabulary: Sequence[str] = ()) -> st.SearchStrategy[tuple[tuple[str, Any], ...]]:
    """Invocation metadata: some random pairs (a `-bin` key takes bytes), often an
    `authorization` credential, sometimes forwarded identity keys."""
    words = st.sampled_from(tuple(dict.fromkeys((*ID_POOL, *vocabulary))))
    ascii_value = st.text(_ASCII, max_size=64)
    pair = weighted(
        (70, st.tuples(_key(), ascii_value)),
        (30, st.tuples(_key().map(lambda k: k + "-bin"), st.binary(max_size=64))),
    )
    scopes = st.lists(
        st.sampled_from([identity.ADMIN_SCOPE, identity.ON_BEHALF_SCOPE, "x", "atalaya:*"]),
        max_size=3,
    ).map(" ".join)
    forwarded = st.sampled_from([identity.TENANT_KEY, identity.USER_KEY, identity.SCOPES_KEY])
    forwarded_value = weighted((70, words), (30, ascii_value))
    authorization = credential()

    @st.composite
    def draw_metadata(draw: Draw) -> tuple[tuple[str, Any], ...]:
        out: list[tuple[str, Any]] = list(draw(st.lists(pair, max_size=4)))
        if draw(st.integers(0, 9)) < 6:
            out.append((identity.AUTHORIZATION_KEY, draw(authorization)))
        if draw(st.integers(0, 9)) < 2:
            for key in draw(st.lists(forwarded, min_size=1, max_size=3)):
                out.append((key, draw(scopes if key == identity.SCOPES_KEY else forwarded_value)))
        return tuple(out)

    return draw_metadata()
