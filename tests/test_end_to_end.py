"""The whole pipeline as `make lab` runs it: simulated instruments on pseudo-terminals (and the
LJM stand-in) -> publishers (processes) -> Mosquitto -> bridge (process) -> InfluxDB.

What the broker carried is compared with what InfluxDB holds: every sample of every device is
stored exactly once, with its exact values and its acquisition time stamp, and each device's
sequence numbers run without a gap from 0.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict

import pytest

from soclab.dev.lab.cli import LabSettings, run_lab

# Samples per device to see before stopping; the MPPT publishes every 0.1 s here.
ENOUGH = {"mppt": 60, "eload": 30, "labjack": 1500}


def carried_samples(messages) -> dict[str, dict[int, dict]]:
    """device -> seq -> sample, as the broker delivered them (a redelivery must be identical)."""
    by_device: dict[str, dict[int, dict]] = defaultdict(dict)
    for message in messages:
        body = json.loads(message.payload)
        device = body["source"]["device"]
        for sample in body["samples"]:
            known = by_device[device].setdefault(sample["seq"], sample)
            assert known == sample, f"{device} seq {sample['seq']} sent twice with different content"
    return by_device


@pytest.mark.slow
def test_every_sample_of_every_instrument_is_stored_once(
    tmp_path, mosquitto, influxdb, site, mqtt_collector, monkeypatch
):
    monkeypatch.setenv("SOCLAB_BRIDGE_INFLUX_TOKEN", influxdb.token)
    settings = LabSettings(
        site=site,
        node="pi-e2e",
        mqtt={"host": mosquitto.host, "port": mosquitto.port},
        influxdb={"url": influxdb.url, "org": influxdb.org, "bucket": influxdb.bucket},
        simulation={"mppt_period_s": 0.1},
    )
    collector = mqtt_collector(mosquitto, f"soclab/{site}/+/+/data")
    with run_lab(settings, tmp_path / "var") as (_view, children):
        deadline = time.monotonic() + 90
        while True:
            while not collector.inbox.empty():
                collector.seen.append(collector.inbox.get())
            counts = {d: len(s) for d, s in carried_samples(collector.seen).items()}
            if all(counts.get(d, 0) >= n for d, n in ENOUGH.items()):
                break
            assert not children.failed(), f"a process died: {children.failed()}"
            assert time.monotonic() < deadline, f"too few samples after 90 s: {counts}"
            time.sleep(0.2)
    # Stopped in order: publishers flushed their last messages, then the bridge wrote them.
    time.sleep(0.5)
    while not collector.inbox.empty():
        collector.seen.append(collector.inbox.get())
    sent = carried_samples(collector.seen)
    assert set(sent) == set(ENOUGH)

    for device, samples in sent.items():
        seqs = sorted(samples)
        assert seqs == list(range(len(seqs))), f"{device}: sequence numbers with gaps"
        rows = influxdb.rows(f"SELECT * FROM {device} WHERE device = '{device}'")
        stored = {row["seq"]: row for row in rows}
        assert len(stored) == len(rows), f"{device}: a sequence number stored twice"
        assert sorted(stored) == seqs, f"{device}: stored {len(stored)} of {len(seqs)} samples"
        for seq, sample in samples.items():
            row = stored[seq]
            assert row["time"] == sample["t_ns"], f"{device} seq {seq}: time stamp changed"
            assert (row["site"], row["node"]) == (site, "pi-e2e")
            for name, value in sample["values"].items():
                assert row[name] == value, f"{device} seq {seq} {name}: stored {row[name]}, sent {value}"
            assert (row.get("flags") or "") == ",".join(sample.get("flags", []))
