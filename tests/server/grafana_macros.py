"""What Grafana does to a dashboard's InfluxQL before InfluxDB sees it, for the dashboard tests.

Grafana (10 and 11) sends a raw InfluxQL query through its backend, which replaces
(``pkg/tsdb/influxdb/models/query.go``, ``Query.Build``):

- ``$timeFilter`` with ``time >= <from>ms and time <= <to>ms`` (epoch milliseconds);
- ``$interval`` and ``$__interval`` with the query's interval in Grafana's short form
  (``gtime.FormatInterval``: whole ``y``, ``d``, ``h``, ``m``, ``s`` or ``ms``), and
  ``$__interval_ms`` with it in milliseconds.

The interval comes from the browser (``rangeutil.calculateInterval``): the time range divided by
the panel's max data points (its width in pixels unless set; ``MAX_DATA_POINTS`` here, an
assumption), rounded by ``roundInterval``'s ladder, and never below the panel's min interval or
the data source's ``timeInterval``. Dashboard variables are replaced first; in a regular
expression (``=~ /.../``) a value is escaped by ``escapeRegex`` (the names soclab allows need no
escaping, so a site name stands as it is).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

MAX_DATA_POINTS = 1000

# (upper bound exclusive, interval) in ms: Grafana's roundInterval, in order.
_LADDER = (
    (10, 1), (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1500, 1000),
    (3500, 2000), (7500, 5000), (12500, 10000), (17500, 15000), (25000, 20000), (45000, 30000),
    (90000, 60000), (210000, 120000), (450000, 300000), (750000, 600000), (1050000, 900000),
    (1500000, 1200000), (2700000, 1800000), (5400000, 3600000), (9000000, 7200000),
    (16200000, 10800000), (32400000, 21600000), (86400000, 43200000), (604800000, 86400000),
    (1814400000, 604800000), (3628800000, 2592000000),
)  # fmt: skip
_UNITS_MS = {
    "y": 31536000000, "M": 2592000000, "w": 604800000, "d": 86400000, "h": 3600000, "m": 60000, "s": 1000,
}  # fmt: skip


def round_interval(ms: float) -> int:
    for bound, interval in _LADDER:
        if ms < bound:
            return interval
    return 31536000000  # 1y


def interval_to_ms(text: str) -> int:
    match = re.fullmatch(r"(\d+)(ms|[yMwdhms])", text)
    if not match:
        raise ValueError(f"not a Grafana interval: {text!r}")
    count, unit = int(match[1]), match[2]
    return count if unit == "ms" else count * _UNITS_MS[unit]


def calculate_interval_ms(from_ms: int, to_ms: int, low_limit: str | None, max_data_points: int) -> int:
    interval = round_interval((to_ms - from_ms) / max_data_points)
    return max(interval, interval_to_ms(low_limit)) if low_limit else interval


def format_interval(ms: int) -> str:
    """gtime.FormatInterval: the largest unit, the count truncated."""
    for unit, size in (("y", 365 * 86400000), ("d", 86400000), ("h", 3600000), ("m", 60000), ("s", 1000)):
        if ms >= size:
            return f"{ms // size}{unit}"
    return f"{ms}ms" if ms >= 1 else "1ms"


def escape_regex(value: str) -> str:
    return re.sub(r"[\\^$*+?.()|\[\]{}/]", lambda m: "\\" + m[0], value)


def render(
    query: str,
    *,
    from_ms: int,
    to_ms: int,
    variables: Mapping[str, str],
    low_limit: str | None,
    max_data_points: int = MAX_DATA_POINTS,
) -> str:
    """The query as InfluxDB receives it from Grafana for this time range and these variables."""
    for name, value in sorted(variables.items(), key=lambda item: -len(item[0])):
        query = query.replace(f"${{{name}}}", escape_regex(value)).replace(f"${name}", escape_regex(value))
    ms = calculate_interval_ms(from_ms, to_ms, low_limit, max_data_points)
    text = format_interval(ms)
    query = query.replace("$timeFilter", f"time >= {from_ms}ms and time <= {to_ms}ms")
    query = query.replace("$interval", text)
    query = query.replace("$__interval_ms", str(ms))
    query = query.replace("$__interval", text)
    leftover = re.findall(r"\$(?!/)\w+", query)
    if leftover:
        raise ValueError(f"unreplaced {leftover} in {query!r}")
    return query
