"""How a ``soclab.data/1`` message becomes InfluxDB points: the storage contract.

One point per sample:

===============  ==========================================================================
measurement      ``source.kind``: ``mppt``, ``eload`` or ``labjack``
tags             ``site``, ``node``, ``device`` from ``source`` (the bridge has checked that
                 they equal the topic's levels)
fields           every entry of the sample's ``values``: numbers as **float**, booleans as
                 **bool**; plus ``seq`` (**integer**, the sample's sequence number) and, only
                 when the sample has flags, ``flags`` (**string**, the flags joined by ``,``,
                 e.g. ``"skipped:ain1"``)
time             ``t_ns``, integer nanoseconds (write precision ns)
===============  ==========================================================================

Identity: InfluxDB identifies a point by measurement + tag set + time, so a message delivered
twice is written twice to the same points and overwrites itself; writes are idempotent.

Why every number is a float: InfluxDB fixes a field's type with its first write (per shard) and
refuses later writes of another type. JSON does not tell ``13`` from ``13.0`` and publishers'
serialisers differ, so writing JSON integers as integers would make a value that happens to be
whole (``"bat_v": 13``) fail the whole write. Booleans stay booleans (``load_en``); ``seq`` is an
integer because it is one by contract and never fractional.

Rejected (``PointError``), though the schema allows them: a number that is not finite as a float
(JSON ``1e999`` parses as infinity; line protocol has no infinity). The schema keeps ``seq`` and
``flags`` out of ``values``.

``line_protocol()`` is what the bridge writes, built for speed from a message that the typed
decoder (``soclab.wire.typed``) has validated: value names, tags and flags are then restricted by
the schema's patterns, so only the tags (which are escaped all the same) could need escaping. One
``%``-template per set of value names renders the samples. When every sample has the same names
and no flags (the usual message), msgspec writes all its numbers in one call (floats as the
shortest text that reads back the same: ``13.0``, ``1e-7``; ``true``/``false``) into one template
for the whole message; otherwise each sample is formatted with Python's ``repr`` (``True`` and
``False`` are line protocol too). InfluxDB sorts fields itself, so their order is the sample's.
``to_points()`` builds the same points with influxdb-client's ``Point``, the reference the tests
compare with (same values, same types).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import msgspec
from influxdb_client import Point, WritePrecision

# influxdb-client's escaping, the exact rules Point applies (private names; the version is pinned).
from influxdb_client.client.write.point import (
    _ESCAPE_MEASUREMENT,
    _escape_key,
    _escape_string,
    _escape_tag_value,
)

from soclab.wire.typed import DataMessage, Sample

TAGS = ("device", "node", "site")  # sorted: the order InfluxDB keeps them in
SEQ_FIELD = "seq"
FLAGS_FIELD = "flags"
RESERVED_FIELDS = frozenset({SEQ_FIELD, FLAGS_FIELD})


class PointError(ValueError):
    """A message that cannot be stored as points; the message says which sample and value."""


def prefix(kind: str, site: str, node: str, device: str) -> bytes:
    """Measurement and tags of a device's points, with the space before the fields."""
    key = (kind, site, node, device)
    known = _PREFIXES.get(key)
    if known is not None:
        return known
    tags = {"device": device, "node": node, "site": site}
    text = _escape_key(kind, _ESCAPE_MEASUREMENT) + "".join(
        f",{tag}={_escape_tag_value(tags[tag])}" for tag in TAGS
    )
    if len(_PREFIXES) >= 100_000:  # one per device: bounded all the same
        _PREFIXES.clear()
    known = _PREFIXES[key] = (text + " ").encode()
    return known


_PREFIXES: dict[tuple[str, str, str, str], bytes] = {}


# One template per set of value names (in their order in the sample): "a=%r,b=%r,seq=%di %d".
_TEMPLATES: dict[tuple[str, ...], str] = {}
_FLAGGED: dict[tuple[str, ...], str] = {}
# The same with every placeholder a %b, and a getter of the values in that order.
_TOKENS: dict[tuple[str, ...], tuple[bytes, Callable[[dict[str, Any]], Any]]] = {}
_ENCODER = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Lines:
    """A message's line protocol and what the bridge checks and reports about it."""

    body: bytes  # one line per sample, joined by newlines
    names: set[tuple[str, ...]]  # the sets of value names its samples use
    seqs: list[int]  # each sample's sequence number
    times: list[int]  # each sample's t_ns
    booleans: bool  # whether any value is a boolean


def line_protocol(message: DataMessage) -> Lines:
    """The line protocol of a valid data message."""
    source = message.source
    head = prefix(source.kind, source.site, source.node, source.device)
    samples = message.samples
    if len(samples) == 1:  # an MPPT's or an e-load's message: the fixed costs below are not worth it
        return _sample_by_sample(head.decode(), samples)
    keys = samples[0].values.keys()
    for sample in samples:
        if sample.flags or sample.values.keys() != keys:
            return _sample_by_sample(head.decode(), samples)
    # The usual message: every sample has the same value names and no flags. msgspec writes every
    # number of the message in one C call (shortest round-trip floats, as repr; true/false), and
    # one template takes them all.
    names = tuple(keys)
    template, get = _TOKENS.get(names) or _tokens(names)
    args: list[Any]  # values, seq, t_ns of each sample in turn
    if len(names) == 1:
        (name,) = names
        args = [x for s in samples for x in (s.values[name], s.seq, s.t_ns)]
    else:  # the same order in every line, whatever each dict's order
        args = [x for s in samples for x in (*get(s.values), s.seq, s.t_ns)]
    encoded = _ENCODER.encode(args)
    tokens = encoded[1:-1].split(b",")
    if b"%" in head:  # a tag holding % must not be read as a placeholder
        head = head.replace(b"%", b"%%")
    stride = len(names) + 2
    return Lines(
        b"\n".join([head + template] * len(samples)) % tuple(tokens),
        {names},
        args[stride - 2 :: stride],
        args[stride - 1 :: stride],
        b"t" in encoded or b"f" in encoded,  # numbers have neither: true, false
    )


def _tokens(names: tuple[str, ...]) -> tuple[bytes, Callable[[dict[str, Any]], Any]]:
    template = b"".join(name.encode() + b"=%b," for name in names) + b"seq=%bi %b"
    if len(_TOKENS) >= 10_000:  # bounded, whatever the devices send
        _TOKENS.clear()
    found = _TOKENS[names] = (template, itemgetter(*names))
    return found


def _sample_by_sample(head: str, samples: list[Sample]) -> Lines:
    lines: list[str] = []
    append = lines.append
    used: set[tuple[str, ...]] = set()
    for sample in samples:
        values = sample.values
        names = tuple(values)
        used.add(names)
        if sample.flags:
            flags = _escape_string(",".join(sample.flags))
            template = _FLAGGED.get(names) or _template(_FLAGGED, names, 'flags="%s",')
            append(head + template % (*values.values(), flags, sample.seq, sample.t_ns))
        else:
            template = _TEMPLATES.get(names) or _template(_TEMPLATES, names, "")
            append(head + template % (*values.values(), sample.seq, sample.t_ns))
    body = ("\n".join(lines) if len(lines) > 1 else lines[0]).encode()
    booleans = b"=True," in body or b"=False," in body  # value names are lower case: only booleans
    return Lines(body, used, [s.seq for s in samples], [s.t_ns for s in samples], booleans)


def _template(cache: dict[tuple[str, ...], str], names: tuple[str, ...], flags: str) -> str:
    template = "".join(f"{name}=%r," for name in names) + flags + "seq=%di %d"
    if len(cache) >= 10_000:  # bounded, whatever the devices send
        cache.clear()
    cache[names] = template
    return template


def check_finite(message: dict[str, Any]) -> None:
    """PointError for a number that line protocol cannot carry (schema-valid, but infinite)."""
    for index, sample in enumerate(message["samples"]):
        for name, value in sample["values"].items():
            if not isinstance(value, bool) and float_text(value) is None:
                raise PointError(f"samples/{index}/values/{name}: {_short(value)} is not a finite float")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} digits)"


def to_points(message: dict[str, Any]) -> list[Point]:
    """The same points as ``line_protocol()``, as influxdb-client ``Point`` objects."""
    source = message["source"]
    points = []
    for sample in message["samples"]:
        point = Point(source["kind"])
        for tag in TAGS:
            point.tag(tag, source[tag])
        for name, value in sample["values"].items():
            point.field(name, value if isinstance(value, bool) else float(value))
        point.field(SEQ_FIELD, int(sample["seq"]))
        if sample.get("flags"):
            point.field(FLAGS_FIELD, ",".join(sample["flags"]))
        points.append(point.time(int(sample["t_ns"]), WritePrecision.NS))
    return points


def float_text(value: float) -> str | None:
    """A number as a line-protocol float, as Point writes it (13.0 -> 13, still a float field);
    None when it is not finite (JSON's 1e999 parses as infinity; line protocol has none)."""
    try:
        number = float(value)
    except OverflowError:
        return None
    if not math.isfinite(number):
        return None
    text = repr(number)
    return text[:-2] if text.endswith(".0") else text
