"""``soclab watch``'s model, fed messages and time directly: what it shows and when it alerts."""

from __future__ import annotations

import json

import pytest
from watchkit import T0, bridge_status, data, dead_letter, status, stored, topic

from soclab.tools.watch.model import Filters, IntakeStats, Model, Thresholds


def alert_texts(model: Model, now: float) -> list[str]:
    return [f"{a.subject}: {a.text}" for a in model.alerts(now)]


def test_a_device_online_with_its_rate_last_values_and_no_alert():
    model = Model(started=T0)
    model.ingest(topic("mppt", "status"), status("mppt"), T0, retained=True)
    for i in range(10):
        model.ingest(topic("mppt"), data("mppt", [i], t=T0 + i), T0 + i + 0.05)
    device = model.devices["lab1/pi-01/mppt"]
    assert (device.state, device.kind, device.samples) == ("online", "mppt", 10)
    assert device.last_values == {"bat_v": 12.509, "bat_a": -1.25}
    assert device.rate.rate(T0 + 9.1) == pytest.approx(1.0, rel=0.25)
    assert model.condition(device, T0 + 9.1) == "online"
    assert model.alerts(T0 + 9.1) == []


def test_a_device_without_data_longer_than_the_threshold_is_silent_then_offline_by_its_will():
    model = Model(Thresholds(silent_s=5.0), started=T0)
    model.ingest(topic("eload", "status"), status("eload"), T0)
    model.ingest(topic("eload"), data("eload", [0]), T0)
    device = model.devices["lab1/pi-01/eload"]
    assert model.condition(device, T0 + 4.9) == "online"
    assert model.condition(device, T0 + 5.1) == "silent"
    assert alert_texts(model, T0 + 5.1) == ["lab1/pi-01/eload: silent for 5.1 s (threshold 5 s)"]
    model.ingest(topic("eload", "status"), status("eload", "offline", reason="connection-lost"), T0 + 8)
    assert model.condition(device, T0 + 20) == "offline"
    assert alert_texts(model, T0 + 20) == ["lab1/pi-01/eload: offline for 12 s (connection-lost)"]


def test_a_retained_offline_status_says_it_was_offline_before_the_monitor_started():
    model = Model(started=T0)
    model.ingest(topic("mppt", "status"), status("mppt", "offline", reason="stopped"), T0, retained=True)
    (text,) = alert_texts(model, T0 + 1)
    assert text == "lab1/pi-01/mppt: offline since before this monitor started (stopped)"


def test_backlog_filling_a_hole_is_not_a_gap_but_a_hole_that_stays_open_is():
    model = Model(Thresholds(gap_grace_s=10.0, silent_s=100), started=T0)
    model.ingest(topic("mppt"), data("mppt", range(0, 10)), T0)
    model.ingest(topic("mppt"), data("mppt", range(20, 30)), T0 + 1)  # live data jumps ahead
    device = model.devices["lab1/pi-01/mppt"]
    assert device.seqs.missing() == 10
    assert alert_texts(model, T0 + 5) == []  # within the grace period: the backlog may still come
    model.ingest(topic("mppt"), data("mppt", range(10, 15)), T0 + 6)  # part of the backlog
    assert device.seqs.missing() == 5
    assert alert_texts(model, T0 + 12) == ["lab1/pi-01/mppt: sequence gap: 5 samples missing since 11 s ago"]
    model.ingest(topic("mppt"), data("mppt", range(15, 20)), T0 + 13)
    assert (device.seqs.missing(), alert_texts(model, T0 + 14)) == (0, [])


def test_samples_sent_again_are_counted_as_duplicates():
    model = Model(started=T0)
    model.ingest(topic("mppt"), data("mppt", range(0, 10)), T0)
    model.ingest(topic("mppt"), data("mppt", range(5, 12)), T0 + 1)
    device = model.devices["lab1/pi-01/mppt"]
    assert (device.seqs.duplicates, device.seqs.missing(), device.seqs.highest) == (5, 0, 11)


def test_a_publisher_that_numbers_again_from_zero_restarts_the_sequence_record():
    model = Model(started=T0)
    model.ingest(topic("mppt"), data("mppt", range(100, 110)), T0)
    model.ingest(topic("mppt", "status"), status("mppt", gauges={"seq_next": 3}), T0 + 1)
    model.ingest(topic("mppt"), data("mppt", range(0, 3)), T0 + 2)
    device = model.devices["lab1/pi-01/mppt"]
    assert (device.seqs.duplicates, device.seqs.missing(), device.seqs.highest) == (0, 0, 2)


def test_a_last_will_with_the_gauges_of_its_connection_does_not_restart_the_sequence_record():
    model = Model(started=T0)
    model.ingest(topic("mppt"), data("mppt", range(100, 110)), T0)
    will = status("mppt", "offline", reason="connection-lost", gauges={"seq_next": 100})
    model.ingest(topic("mppt", "status"), will, T0 + 1)
    assert model.devices["lab1/pi-01/mppt"].seqs.highest == 109


def test_a_spool_that_only_grows_and_an_old_backlog_are_alerts():
    model = Model(Thresholds(spool_growth_s=20.0, backlog_age_s=60.0, silent_s=1000), started=T0)
    for i, depth in enumerate((10, 10, 50, 120, 300, 800)):
        gauges = {"spool_depth": depth, "backlog_samples": depth, "spool_oldest_age_s": 5.0 * i * 4}
        model.ingest(topic("labjack", "status"), status("labjack", gauges=gauges), T0 + 5 * i)
    texts = alert_texts(model, T0 + 25)
    assert texts == [
        "lab1/pi-01/labjack: spool grew from 10 to 800 samples since 25 s ago",
        "lab1/pi-01/labjack: backlog: oldest unconfirmed sample 100 s old",
    ]
    model.ingest(topic("labjack", "status"), status("labjack", gauges={"spool_depth": 20}), T0 + 30)
    assert alert_texts(model, T0 + 30) == []


def test_a_spool_that_rose_once_and_stays_level_is_not_an_alert():
    """A streaming device always has about one read's batch waiting for its confirmation."""
    model = Model(Thresholds(spool_growth_s=20.0, silent_s=1000), started=T0)
    for i, depth in enumerate((0, 50, 50, 50, 50, 50, 50)):
        model.ingest(topic("labjack", "status"), status("labjack", gauges={"spool_depth": depth}), T0 + 5 * i)
    assert alert_texts(model, T0 + 30) == []


def test_bridge_lag_from_acquisition_to_storage_median_and_maximum_over_the_last_minute():
    model = Model(Thresholds(lag_s=2.0, silent_s=1000), started=T0)
    model.ingest("soclab-bridge/lab/status", bridge_status(messages_received=0), T0)
    # 10 one-sample messages acquired 1 s apart, confirmed 0.5 s after each; then one 3 s late
    for seq in range(10):
        model.ingest(topic("mppt"), data("mppt", [seq], t=T0 + seq), T0 + seq + 0.1)
        model.ingest(topic("mppt", "stored"), stored([[seq, seq]], t=T0 + seq + 0.5), T0 + seq + 0.5)
    model.ingest(topic("mppt"), data("mppt", [10], t=T0 + 10), T0 + 10.1)
    model.ingest(topic("mppt", "stored"), stored([[10, 10]], t=T0 + 13), T0 + 13)
    median, worst = model.bridges["lab"].lag.median_max(T0 + 13)
    assert (median, worst) == (pytest.approx(0.5), pytest.approx(3.0))
    assert model.devices["lab1/pi-01/mppt"].confirmed == 11
    assert alert_texts(model, T0 + 13) == ["bridge lab: lag to storage median 0.5 s, max 3.0 s (over 2 s)"]
    assert model.bridges["lab"].lag.median_max(T0 + 80) is None  # the minute has passed


def test_a_batch_confirmed_whole_gives_the_lag_of_each_of_its_samples():
    model = Model(started=T0)
    model.ingest(topic("labjack"), data("labjack", range(1000), t=T0, period_s=0.0001), T0 + 0.2)
    model.ingest(topic("labjack", "stored"), stored([[0, 999]], t=T0 + 0.3), T0 + 0.3)
    median, worst = model.bridges["lab"].lag.median_max(T0 + 0.3)
    assert median == pytest.approx(0.25, abs=0.001)  # the middle sample: acquired at T0 + 0.05 s
    assert worst == pytest.approx(0.3)


def test_dead_letters_are_listed_with_their_reason_and_raise_an_alert_for_a_while():
    model = Model(Thresholds(recent_s=60.0), started=T0)
    refused = topic("mppt")
    model.ingest(topic("mppt", "deadletter"), dead_letter(refused, "not JSON: Expecting value"), T0)
    model.ingest("soclab-bridge/lab/deadletter", dead_letter("soclab/x", "topic is not soclab/..."), T0 + 1)
    assert model.dead_letter_total == 2
    first = model.dead_letters[0]
    assert (first.topic, first.reason) == (refused, "not JSON: Expecting value")
    assert model.devices["lab1/pi-01/mppt"].dead_letters == 1
    assert model.bridges["lab"].dead_letters == 2
    assert alert_texts(model, T0 + 2) == [
        "dead letters: 2 in the last 60 s; latest 1.0 s ago soclab/x: topic is not soclab/..."
    ]
    assert alert_texts(model, T0 + 100) == []


def test_a_bridge_offline_and_its_rates_from_its_counters():
    model = Model(started=T0)
    model.ingest("soclab-bridge/lab/status", bridge_status(messages_received=0, points_written=0), T0)
    model.ingest("soclab-bridge/lab/status", bridge_status(messages_received=50, points_written=500), T0 + 5)
    bridge = model.bridges["lab"]
    assert (bridge.messages_rate.rate(T0 + 5), bridge.points_rate.rate(T0 + 5)) == (10.0, 100.0)
    model.ingest("soclab-bridge/lab/status", bridge_status("offline"), T0 + 6)
    assert alert_texts(model, T0 + 7) == ["bridge lab: offline for 1.0 s"]


def test_a_tripped_run_limit_and_a_failed_command_are_alerts():
    model = Model(started=T0)
    event = {"run": "r1", "event": "limit", "reason": "bat_v 10.4 V below min_v 10.5 V", "step": 3}
    run = {"schema": "soclab.run.status/1", "state": "idle", "t_ns": 1, "last_event": event}
    model.ingest("soclab/lab1/pi-01/run/status", json.dumps(run).encode(), T0)
    result = {"command": "load_on", "outcome": "failed", "reason": "no access (not in remote mode)"}
    model.ingest(topic("eload", "cmd/result"), json.dumps(result).encode(), T0)
    assert alert_texts(model, T0 + 1) == [
        "run lab1/pi-01: limit tripped: bat_v 10.4 V below min_v 10.5 V",
        "lab1/pi-01/eload: command load_on failed: no access (not in remote mode)",
    ]
    assert "run lab1/pi-01" not in " ".join(alert_texts(model, T0 + 400))  # no longer recent


def test_filters_keep_only_matching_devices():
    model = Model(filters=Filters(device="mppt*"), started=T0)
    model.ingest(topic("mppt"), data("mppt", [0]), T0)
    model.ingest(topic("mppt-2", kind="data"), data("mppt-2", [0], kind="mppt"), T0)
    model.ingest(topic("eload"), data("eload", [0]), T0)
    assert sorted(model.devices) == ["lab1/pi-01/mppt", "lab1/pi-01/mppt-2"]
    assert model.filtered_out == 1


def test_a_monitor_that_hears_of_no_device_says_so():
    model = Model(Thresholds(silent_s=10), started=T0)
    assert model.alerts(T0 + 9) == []
    (alert,) = model.alerts(T0 + 11)
    assert alert.text == "no device heard of in 11 s: wrong broker, filters or account?"
    model.ingest(topic("mppt", "status"), status("mppt"), T0 + 12)
    assert model.alerts(T0 + 12) == []


def test_the_monitor_says_when_it_falls_behind_or_is_disconnected():
    model = Model(started=T0)
    behind = IntakeStats(connected=True, since=T0, queued=5000, oldest_s=3.5, dropped=0, received=9000)
    (alert,) = model.alerts(T0, behind)
    assert alert.text == "falling behind: 5000 messages waiting, oldest 3.5 s"
    lost = IntakeStats(connected=False, since=T0 - 4, queued=0, oldest_s=0, dropped=12, received=9000)
    assert [a.text for a in model.alerts(T0, lost)] == [
        "not connected to the broker for 4.0 s",
        "fell behind: dropped 12 messages (queue full)",
    ]


BAD_MESSAGES = [
    (topic("mppt"), b"not json at all"),
    (topic("mppt"), b"\xff\xfe\x00garbage"),
    (topic("mppt"), b"[" * 100_000),  # nested too deeply for a recursive parser
    (topic("mppt"), b'{"schema": "soclab.data/1", "source": {}, "samples": []}'),
    (topic("mppt"), b'{"seq": ' + b"9" * 5000 + b"}"),  # Python's integer-string limit
    (topic("mppt"), data("eload", [1])),  # source does not match the topic
    (topic("mppt"), json.dumps({"schema": "soclab.data/1", "samples": "x" * 2_000_000}).encode()),
    (topic("mppt", "status"), b'{"schema": "soclab.status/1", "state": "maybe"}'),
    (topic("mppt", "status"), b"null"),
    (topic("mppt", "stored"), b'{"schema": "soclab.stored/1", "consumer": 5}'),
    (topic("mppt", "deadletter"), b"{}"),
    (topic("mppt", "cmd/result"), b"[1, 2]"),
    ("soclab/lab1/pi-01/run/status", b"\x00"),
    ("soclab-bridge/lab/status", b'{"state": 1}'),
    ("soclab-bridge/lab/status", b"NaN"),
    ("soclab-bridge/lab/extra/status", b"{}"),
    ("soclab/LAB1/pi-01/mppt/data", data("mppt", [1])),  # not a topic of the layout
    ("soclab/lab1/pi-01/mppt/unknown", b"{}"),
    ("soclab/too/short", b"{}"),
]


@pytest.mark.parametrize(("bad_topic", "payload"), BAD_MESSAGES, ids=range(len(BAD_MESSAGES)))
def test_a_malformed_message_is_counted_and_shown_never_fatal(bad_topic, payload):
    model = Model(started=T0)
    model.ingest(topic("mppt"), data("mppt", [0]), T0)
    model.ingest(bad_topic, payload, T0 + 1)
    model.ingest(topic("mppt"), data("mppt", [1]), T0 + 2)
    assert model.malformed_total == 1
    (bad,) = model.malformed
    assert bad.topic == bad_topic[:200]
    assert 0 < len(bad.reason) <= 200
    assert bad.size == len(payload)
    assert model.devices["lab1/pi-01/mppt"].samples == 2  # what came after was still taken
    assert any(a.subject == "malformed" for a in model.alerts(T0 + 3))
