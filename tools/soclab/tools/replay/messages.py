"""A recording as ``soclab.data/1`` messages on the replay path, in the order a live lab sends them.

Each device's samples go in time order with consecutive sequence numbers (from ``seq_start``),
at most ``samples_per_message`` per message and spanning at most ``max_span_s`` of recorded time
(the bridge refuses a message whose samples are spread too far: each stretch of time is a
database shard of its own). The devices are interleaved by time. Topics are
``soclab/<site>/<node>/<device>/replay``: the bridge stores them without its live time window,
keeps them out of the live lag and confirms them on ``.../replay/stored``.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from soclab.tools.replay.recording import Recording, Sample
from soclab.wire import DATA_SCHEMA, Topic

KIND = "replay"
CONFIRMATION_KIND = "replay/stored"


@dataclass(frozen=True, slots=True)
class Batch:
    """One message: its topic, device, the sequence numbers it carries and its body."""

    topic: str
    device: str
    first: int
    last: int
    message: dict[str, Any]

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    @property
    def t_ns(self) -> int:
        """Time of its last sample: the order in which batches go out."""
        return int(self.message["samples"][-1]["t_ns"])


def batches(
    recording: Recording,
    site: str,
    node: str,
    *,
    samples_per_message: int = 100,
    max_span_s: float = 3600.0,
    seq_start: int = 0,
) -> Iterator[Batch]:
    """Every device's batches, merged by time."""
    if samples_per_message < 1:
        raise ValueError("samples per message must be at least 1")
    if max_span_s < 0:
        raise ValueError("the span of a message cannot be negative")
    streams = [
        _device_batches(recording, site, node, device, samples_per_message, int(max_span_s * 1e9), seq_start)
        for device in sorted(recording.samples)
    ]
    for _t_ns, _device, batch in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
        yield batch


def _device_batches(
    recording: Recording,
    site: str,
    node: str,
    device: str,
    per_message: int,
    max_span_ns: int,
    seq_start: int,
) -> Iterator[tuple[int, str, Batch]]:
    topic = str(Topic(site, node, device, KIND))
    source = {"site": site, "node": node, "device": device, "kind": recording.kinds[device]}
    seq = seq_start
    group: list[Sample] = []
    for sample in recording.samples[device]:
        if group and (len(group) == per_message or sample.t_ns - group[0].t_ns > max_span_ns):
            yield _batch(topic, device, source, seq, group)
            seq += len(group)
            group = []
        group.append(sample)
    if group:
        yield _batch(topic, device, source, seq, group)


def _batch(
    topic: str, device: str, source: dict[str, str], first: int, group: list[Sample]
) -> tuple[int, str, Batch]:
    message = {
        "schema": DATA_SCHEMA,
        "source": source,
        "samples": [
            {"seq": first + i, "t_ns": s.t_ns, "values": dict(s.values)} for i, s in enumerate(group)
        ],
    }
    batch = Batch(topic, device, first, first + len(group) - 1, message)
    return batch.t_ns, device, batch
