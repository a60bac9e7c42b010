"""``soclab replay``: publish a recorded session as ``soclab.data/1`` messages on the devices'
``replay`` topics (the bridge stores them without its live time window).

The recording is a Grafana CSV export ("series to columns"), as in ``soclab.dev``'s ``data/lab-2021-05-28``:
a ``Time`` column in epoch milliseconds and one column per series, named like
``Bat_V {device="mppt-1210-hus", name="V"}``; an empty cell means no sample at that time; rows
need not be sorted. ``COLUMNS`` says which soclab device and field each series becomes (the
default is the 2021-05-28 recording's); series of one device at the same time become one sample.

Each device's samples are published in time order with their recorded time stamps and
consecutive sequence numbers (from ``--seq-start``, default 0), ``--samples-per-message`` per
message, QoS 1, the devices interleaved by time as a live lab would send them. ``--speed 0``
(the default) sends as fast as the broker takes them; ``--speed 1`` in real time, ``60`` a minute
per second. The recording's time is when the old server received a sample (whole seconds), the
best acquisition time it has.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import re
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

from soclab.tools.connection import add_mqtt_arguments, connect, mqtt_settings
from soclab.wire import DATA_SCHEMA, Topic, encode

Value = float | bool


@dataclass(frozen=True, slots=True)
class Target:
    """Where one recorded series goes: a device (topic level), its kind and a field name."""

    device: str
    kind: str
    field: str


# The 2021-05-28 recording: (series name, its "device" label) -> target.
COLUMNS: dict[tuple[str, str], Target] = {
    ("Bat_voltage", "470023670"): Target("labjack", "labjack", "bat_v"),
    ("Bat_current", "470023670"): Target("labjack", "labjack", "bat_a"),
    ("Bat_A", "mppt-1210-hus"): Target("mppt", "mppt", "bat_a"),
    ("Bat_V", "mppt-1210-hus"): Target("mppt", "mppt", "bat_v"),
    ("Bat_V", "EA-EL-3060"): Target("eload", "eload", "bat_v"),
}
_HEADER = re.compile(r"^(?P<series>[^{]+?)\s*\{(?P<labels>.*)\}$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


class RecordingError(ValueError):
    """A recording this tool cannot read; the message says where."""


@dataclass(frozen=True, slots=True)
class Sample:
    t_ns: int
    values: dict[str, Value]


@dataclass(frozen=True, slots=True)
class Recording:
    """Each device's samples in time order, and its kind."""

    samples: dict[str, list[Sample]]
    kinds: dict[str, str]


def read_grafana_csv(path: Path | str, columns: Mapping[tuple[str, str], Target] = COLUMNS) -> Recording:
    """Read a Grafana "series to columns" CSV export (UTF-8, with or without BOM)."""
    with open(path, encoding="utf-8-sig", newline="") as file:
        rows = csv.reader(file)
        try:
            header = next(rows)
        except StopIteration:
            raise RecordingError(f"{path}: empty file") from None
        if not header or header[0] != "Time":
            raise RecordingError(f"{path}: the first column must be 'Time', not {header[:1]}")
        targets = [_target(name, columns, path) for name in header[1:]]
        by_device: dict[str, dict[int, dict[str, Value]]] = {}
        for line, row in enumerate(rows, start=2):
            if not row:
                continue  # a blank line (the export ends with one)
            if len(row) != len(header):
                raise RecordingError(f"{path}:{line}: {len(row)} cells, the header has {len(header)}")
            try:
                t_ns = int(row[0]) * 1_000_000
            except ValueError:
                raise RecordingError(f"{path}:{line}: time {row[0]!r} is not epoch milliseconds") from None
            for target, cell in zip(targets, row[1:], strict=True):
                if cell.strip():
                    _add(by_device, target, t_ns, _number(cell, path, line), path, line)
    kinds = {t.device: t.kind for t in targets}
    samples = {
        device: [Sample(t, values) for t, values in sorted(times.items())]
        for device, times in by_device.items()
    }
    return Recording(samples, kinds)


def _target(name: str, columns: Mapping[tuple[str, str], Target], path: Path | str) -> Target:
    match = _HEADER.match(name)
    labels = dict(_LABEL.findall(match["labels"])) if match else {}
    key = (match["series"].strip() if match else name, labels.get("device", ""))
    if key not in columns:
        known = ", ".join(f"{s} {{device={d!r}}}" for s, d in columns)
        raise RecordingError(f"{path}: no target for column {name!r}; known: {known}")
    return columns[key]


def _number(cell: str, path: Path | str, line: int) -> float:
    try:
        return float(cell)
    except ValueError:
        raise RecordingError(f"{path}:{line}: {cell!r} is not a number") from None


def _add(
    by_device: dict[str, dict[int, dict[str, Value]]],
    target: Target,
    t_ns: int,
    value: float,
    path: Path | str,
    line: int,
) -> None:
    values = by_device.setdefault(target.device, {}).setdefault(t_ns, {})
    if values.get(target.field, value) != value:
        raise RecordingError(f"{path}:{line}: {target.device} {target.field} recorded twice at {t_ns} ns")
    values[target.field] = value


def messages(
    recording: Recording, site: str, node: str, *, samples_per_message: int = 1, seq_start: int = 0
) -> Iterator[tuple[str, dict]]:
    """(topic, data message) in time order across devices; seq consecutive per device."""
    if samples_per_message < 1:
        raise ValueError("samples_per_message must be at least 1")
    streams = [
        _device_messages(recording, site, node, device, samples_per_message, seq_start)
        for device in sorted(recording.samples)
    ]
    for _t_ns, _device, topic, message in heapq.merge(*streams):
        yield topic, message


def _device_messages(
    recording: Recording, site: str, node: str, device: str, per_message: int, seq_start: int
) -> Iterator[tuple[int, str, str, dict]]:
    topic = str(Topic(site, node, device, "replay"))
    source = {"site": site, "node": node, "device": device, "kind": recording.kinds[device]}
    samples = recording.samples[device]
    for start in range(0, len(samples), per_message):
        batch = samples[start : start + per_message]
        message = {
            "schema": DATA_SCHEMA,
            "source": source,
            "samples": [
                {"seq": seq_start + start + i, "t_ns": s.t_ns, "values": dict(s.values)}
                for i, s in enumerate(batch)
            ],
        }
        yield batch[-1].t_ns, device, topic, message


def publish(
    client: mqtt.Client, items: Iterable[tuple[str, dict]], *, speed: float = 0.0, timeout_s: float = 60.0
) -> int:
    """Publish every message with QoS 1 on a connected client (network loop running); return the
    count once the broker has acknowledged them all. Raises TimeoutError if it has not within
    ``timeout_s`` after the last one was handed over."""
    pending: deque[mqtt.MQTTMessageInfo] = deque()
    first_t_ns: int | None = None
    started = time.monotonic()
    count = 0
    for topic, message in items:
        if speed > 0:
            t_ns = message["samples"][-1]["t_ns"]
            first_t_ns = t_ns if first_t_ns is None else first_t_ns
            delay = started + (t_ns - first_t_ns) / 1e9 / speed - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        pending.append(client.publish(topic, encode(message), qos=1))
        count += 1
        while pending and pending[0].is_published():
            pending.popleft()
    deadline = time.monotonic() + timeout_s
    for info in pending:
        info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        if not info.is_published():
            raise TimeoutError(f"the broker has not acknowledged every message after {timeout_s} s")
    return count


def _window(client: mqtt.Client) -> None:
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="soclab replay",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("csv", type=Path, help="Grafana CSV export")
    parser.add_argument("--site", required=True)
    parser.add_argument("--node", required=True)
    add_mqtt_arguments(parser)
    parser.add_argument("--samples-per-message", type=int, default=1)
    parser.add_argument("--seq-start", type=int, default=0)
    parser.add_argument("--speed", type=float, default=0.0, help="0: as fast as possible; 1: real time")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="for the broker's last acknowledgements (s)"
    )
    args = parser.parse_args(argv)
    try:
        recording = read_grafana_csv(args.csv)
        items = messages(
            recording,
            args.site,
            args.node,
            samples_per_message=args.samples_per_message,
            seq_start=args.seq_start,
        )
        client = connect(mqtt_settings(args), "replay", setup=_window)
    except (OSError, ValueError) as exc:  # ConfigError and ConnectionError among them
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    try:
        count = publish(client, items, speed=args.speed, timeout_s=args.timeout)
    except TimeoutError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 1
    finally:
        client.disconnect()
        client.loop_stop()
    samples = {device: len(s) for device, s in recording.samples.items()}
    print(f"replay: {count} messages published; samples per device: {samples}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
