"""A long outage drains completely and live data is not starved; a full spool loses visibly."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time

import pytest

from soclab.dev.sim.steady import SteadyInstrument
from soclab.edge.instruments.base import Reading
from soclab.edge.publisher.config import PublisherConfig, SourceConfig, load
from soclab.edge.publisher.service import Publisher
from soclab.edge.spool import Spool

HOUR_AT_100_HZ = 360_000


def publisher_config(tmp_path, site, broker, **batch) -> PublisherConfig:
    env = {
        "SOCLAB_SOURCE_SITE": site,
        "SOCLAB_SOURCE_NODE": "pi-01",
        "SOCLAB_SOURCE_DEVICE": "labjack",
        "SOCLAB_SOURCE_KIND": "labjack",
        "SOCLAB_MQTT_HOST": broker.host,
        "SOCLAB_MQTT_PORT": str(broker.port),
        "SOCLAB_SPOOL_PATH": str(tmp_path / "spool.sqlite"),
        "SOCLAB_STATUS_INTERVAL_S": "0.5",
        **{f"SOCLAB_BATCH_{k.upper()}": str(v) for k, v in batch.items()},
    }
    return load(None, env=env)


def run_in_thread(publisher: Publisher) -> threading.Thread:
    thread = threading.Thread(target=publisher.run, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_an_hour_of_backlog_drains_while_live_data_keeps_flowing(
    tmp_path, mosquitto, influxdb, site, start_bridge
):
    """An hour of LabJack data at 100 Hz waits in the spool (the Pi was offline); then the link
    is back. The figures (drain rate x real time) are in bench/drain.py; here: completeness."""
    t0 = time.time_ns() - 3600 * 10**9
    spool = Spool(tmp_path / "spool.sqlite", sync="normal")
    for start in range(0, HOUR_AT_100_HZ, 10_000):
        spool.append([Reading(t0 + i * 10_000_000, {"bat_v": 12.0}) for i in range(start, start + 10_000)])
    spool.close()
    start_bridge(mosquitto, influxdb, site)
    publisher = Publisher(publisher_config(tmp_path, site, mosquitto, max_samples=5000), SteadyInstrument(10))
    thread = run_in_thread(publisher)
    try:
        live_seen_at_backlog = None
        deadline = time.monotonic() + 240
        while True:
            backlog = influxdb.query(f"SELECT count(seq) FROM labjack WHERE seq < {HOUR_AT_100_HZ}")
            stored_backlog = backlog[0]["values"][0][1] if backlog else 0
            live = influxdb.query(f"SELECT count(seq) FROM labjack WHERE seq >= {HOUR_AT_100_HZ}")
            stored_live = live[0]["values"][0][1] if live else 0
            if live_seen_at_backlog is None and stored_live >= 5:
                live_seen_at_backlog = stored_backlog
            if stored_backlog == HOUR_AT_100_HZ:
                break
            assert time.monotonic() < deadline, f"drained {stored_backlog} of {HOUR_AT_100_HZ} in 240 s"
            time.sleep(0.5)
        # Live samples were stored while most of the backlog was still waiting.
        assert live_seen_at_backlog is not None
        assert live_seen_at_backlog < HOUR_AT_100_HZ / 2
    finally:
        publisher.stop()
        thread.join(timeout=30)
    rows = influxdb.query("SELECT count(seq) FROM labjack")[0]["values"][0][1]
    assert rows + publisher.spool.depth == publisher.spool.next_seq  # stored, or still spooled


def test_a_full_spool_drops_the_oldest_and_says_so(tmp_path, mosquitto, site, mqtt_collector, caplog):
    # The broker is unreachable at first (a closed port): the spool fills beyond its bound.
    config = publisher_config(tmp_path, site, mosquitto)
    closed = PublisherConfig(
        source=SourceConfig(site, "pi-01", "labjack", "labjack"),
        mqtt=type(config.mqtt)(host=mosquitto.host, port=1, reconnect_max_s=1.0),
        spool=type(config.spool)(path=str(tmp_path / "spool.sqlite"), max_samples=50),
        status=config.status,
    )
    caplog.set_level(logging.WARNING)
    publisher = Publisher(closed, SteadyInstrument(200))
    thread = run_in_thread(publisher)
    deadline = time.monotonic() + 30
    while publisher.spool.dropped == 0:
        assert time.monotonic() < deadline, "the spool never filled"
        time.sleep(0.05)
    publisher.stop()
    thread.join(timeout=30)
    assert publisher.spool.depth <= 50
    assert "event=spool_full policy=drop-oldest" in caplog.text
    # The next run, connected, reports the loss in its retained status.
    status = mqtt_collector(mosquitto, f"soclab/{site}/pi-01/labjack/status")
    publisher = Publisher(dataclasses.replace(config, spool=closed.spool), SteadyInstrument(1))
    thread = run_in_thread(publisher)
    try:
        dropped = 0
        deadline = time.monotonic() + 30
        while dropped == 0:
            assert time.monotonic() < deadline, "no status reports the dropped samples"
            body = json.loads(status.wait_for(len(status.seen) + 1)[-1].payload)
            dropped = body.get("counters", {}).get("spool_dropped", 0)
        assert dropped >= 1
    finally:
        publisher.stop()
        thread.join(timeout=30)
