"""Bad input against the lab pipeline as ``make lab`` runs it (development broker, anonymous: what
the hardening issue calls the lab pipeline): findings 5, 6, 7, 10, 11, 12 and 13. On this broker
anyone may publish anything, so the attacks here reach the publishers' confirmations, the
bridge's intake and the live view directly. Every test counts the good devices' samples of its
own time window (none lost, none doubled, no process crashed; ``conftest`` keeps the report).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pipeline import ATTACK_NODE, NODE, Attacker, Pipeline, assert_harmless

from soclab.dev.lab.view import LabView
from soclab.dev.sim.steady import SteadyInstrument
from soclab.edge.publisher.config import load as load_publisher_config
from soclab.edge.publisher.service import Publisher
from soclab.tools import replay
from soclab.wire.mqtt import MqttSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

WAIT_S = 10.0


def data(
    pipeline: Pipeline, device: str, samples: list[dict[str, Any]], kind: str = "labjack"
) -> dict[str, Any]:
    source = {"site": pipeline.site, "node": ATTACK_NODE, "device": device, "kind": kind}
    return {"schema": "soclab.data/1", "source": source, "samples": samples}


def encoded(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def stored_seqs(pipeline: Pipeline, device: str, measurement: str = "labjack") -> list[int]:
    rows = pipeline.query(f"SELECT seq FROM {measurement} WHERE device = '{device}'")
    return [int(v[1]) for s in rows for v in s["values"]]


def wait_until(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@contextlib.contextmanager
def listening(pipeline: Pipeline, topic: str) -> Iterator[Attacker]:
    with Attacker(pipeline.settings("liar")) as listener:
        listener.subscribe(topic)
        yield listener


def confirmations(listener: Attacker, timeout_s: float = WAIT_S) -> dict[str, list[list[int]]]:
    """The first confirmation that arrives, as {"stored": ranges, "dead_lettered": ranges}."""
    message = listener.received(timeout_s)
    assert message is not None, "no confirmation"
    body = json.loads(message.payload)
    return {k: body.get(k, []) for k in ("stored", "dead_lettered")}


def seqs_of(ranges: list[list[int]]) -> set[int]:
    return {s for first, last in ranges for s in range(first, last + 1)}


# --- finding 10: the bridge's intake ----------------------------------------------------------------


def test_finding_10_only_utf8_json_is_accepted(lab: Pipeline, record: Callable) -> None:
    since = lab.marks()
    now = time.time_ns()
    inputs = {
        "utf-16": json.dumps(data(lab, "evil", [{"seq": 1, "t_ns": now, "values": {"bat_v": 1.0}}])).encode(
            "utf-16"
        ),
        "utf-8 with BOM": b"\xef\xbb\xbf"
        + encoded(data(lab, "evil", [{"seq": 2, "t_ns": now, "values": {"bat_v": 1.0}}])),
    }
    with listening(lab, lab.topic("evil", "deadletter")) as dead, Attacker(lab.settings("evil")) as evil:
        for payload in inputs.values():
            evil.publish(lab.topic("evil"), payload)
        refused = [dead.received(3.0) for _ in inputs]
    row = record("10", "valid messages in UTF-16 and with a BOM", len(inputs), lab, since)
    assert_harmless(row, lab)
    assert not {1, 2} & set(stored_seqs(lab, "evil"))
    assert all(m is not None for m in refused), "not dead-lettered"


def test_finding_10_values_and_flags_are_bounded_and_reasons_say_why(lab: Pipeline, record: Callable) -> None:
    since = lab.marks()
    now = time.time_ns()
    inputs = {
        "2,000 values in one sample": [
            {"seq": 10, "t_ns": now, "values": {f"v{i}": 1.0 for i in range(2000)}}
        ],
        "690 KB of flags": [
            {"seq": 11, "t_ns": now, "values": {}, "flags": [f"f{i:05d}" + "x" * 57 for i in range(11_000)]}
        ],
        "a 5,000-character value name": [{"seq": 12, "t_ns": now, "values": {"A" * 5000: 1.0}}],
    }
    with listening(lab, lab.topic("evil", "deadletter")) as dead, Attacker(lab.settings("evil")) as evil:
        for samples in inputs.values():
            evil.publish(lab.topic("evil"), encoded(data(lab, "evil", samples)))
        letters = [dead.received(3.0) for _ in inputs]
    row = record("10", "2,000 values, 690 KB of flags, a 5,000-char value name", len(inputs), lab, since)
    assert_harmless(row, lab)
    assert not {10, 11, 12} & set(stored_seqs(lab, "evil"))
    reasons = [json.loads(m.payload)["reason"] for m in letters if m is not None]
    assert len(reasons) == len(inputs), "not all dead-lettered"
    assert all(len(r) <= 500 for r in reasons), [len(r) for r in reasons]
    assert "match" in reasons[2] or "pattern" in reasons[2], reasons[2][-200:]  # why, not only what


def test_finding_10_after_a_partial_write_the_confirmation_names_what_is_stored(
    lab: Pipeline, record: Callable
) -> None:
    """Another writer made ``campaign_mix`` a string in this shard; one sample of 100 carries it
    as a number: InfluxDB stores 99 points and refuses one."""
    since = lab.marks()
    t0 = time.time_ns() - 60 * 10**9
    write_directly(lab, f'labjack,device=other,node=x,site=x campaign_mix="text" {t0}')
    mixed = [{"seq": 101 + i, "t_ns": t0 + (1 + i) * 10**6, "values": {"bat_v": 12.0}} for i in range(100)]
    mixed[50]["values"] = {"campaign_mix": 1.5}
    with listening(lab, lab.topic("evil", "stored")) as confirms, Attacker(lab.settings("evil")) as evil:
        evil.publish(lab.topic("evil"), encoded(data(lab, "evil", mixed)))
        said = confirmations(confirms)
    row = record("10", "a message InfluxDB stores 99 of 100 points of", 1, lab, since)
    assert_harmless(row, lab)
    in_db = set(stored_seqs(lab, "evil")) & set(range(101, 201))
    assert len(in_db) == 99
    assert seqs_of(said["stored"]) == in_db
    assert seqs_of(said["dead_lettered"]) == {151}


def write_directly(pipeline: Pipeline, line: str) -> None:
    """A point written straight into the database, by another writer than the bridge."""
    url = f"{pipeline.influx.url}/write?db={pipeline.db}&precision=ns"
    with urllib.request.urlopen(urllib.request.Request(url, data=line.encode(), method="POST"), timeout=10):
        pass


def test_finding_10_two_samples_at_one_time_are_not_both_confirmed_stored(
    lab: Pipeline, record: Callable
) -> None:
    since = lab.marks()
    t = time.time_ns() - 30 * 10**9
    twins = [
        {"seq": 300, "t_ns": t, "values": {"bat_v": 1.0}},
        {"seq": 301, "t_ns": t, "values": {"bat_v": 2.0}},
    ]
    with (
        listening(lab, lab.topic("evil", "stored")) as confirms,
        listening(lab, lab.topic("evil", "deadletter")) as dead,
        Attacker(lab.settings("evil")) as evil,
    ):
        evil.publish(lab.topic("evil"), encoded(data(lab, "evil", twins)))
        refused = dead.received(3.0)
        said = confirms.received(1.0 if refused else WAIT_S)
    row = record("10", "two samples with the same time stamp in one message", 1, lab, since)
    assert_harmless(row, lab)
    confirmed = seqs_of(json.loads(said.payload).get("stored", [])) if said else set()
    points = set(stored_seqs(lab, "evil")) & {300, 301}
    assert confirmed <= points  # nothing confirmed stored that InfluxDB does not hold as its own point
    assert len(points) == len(confirmed)


def test_finding_10_a_dead_letter_is_counted_once(lab: Pipeline, record: Callable) -> None:
    """A dead letter is counted in the telemetry point of the next write; when InfluxDB refuses
    part of that write it still keeps that point, and the bridge reported the dead letter again."""
    since = lab.marks()
    t0 = time.time_ns() - 50 * 10**9
    first = [{"seq": 500, "t_ns": t0, "values": {"campaign_mix2": True}}]  # a boolean field from now on
    conflict = [{"seq": 501, "t_ns": t0 + 1, "values": {"campaign_mix2": 1.5}}]
    with listening(lab, lab.topic("evil", "stored")) as confirms, Attacker(lab.settings("evil")) as evil:
        evil.publish(lab.topic("evil"), encoded(data(lab, "evil", first)))
        assert seqs_of(confirmations(confirms)["stored"]) == {500}
        with Attacker(lab.settings("liar")) as liar:
            liar.publish(lab.topic("liar"), b"not json")  # a dead letter, pending in the telemetry
            evil.publish(lab.topic("evil"), encoded(data(lab, "evil", conflict)))  # a write refused in part

    def counted() -> float:
        rows = lab.query("SELECT sum(dead_letters) FROM soclab_bridge WHERE device = 'liar'")
        return rows[0]["values"][0][1] if rows else 0

    assert wait_until(lambda: counted() >= 1)
    time.sleep(2.0)  # the telemetry of the next writes (the good devices write all the time)
    row = record("10", "a dead letter, then a write InfluxDB refuses in part", 2, lab, since)
    assert_harmless(row, lab)
    assert counted() == 1


def test_finding_10_the_live_view_survives_malformed_messages(lab: Pipeline, record: Callable) -> None:
    since = lab.marks()
    view = LabView(MqttSettings(host=lab.broker.host, port=lab.broker.port), stream=io.StringIO())
    view.start()
    devices = view.model.devices
    try:
        assert wait_until(lambda: f"{lab.site}/{NODE}/mppt" in devices), "the view saw nothing"
        malformed = [
            (lab.topic("evil"), b'{"samples": ["x", 1, null]}'),
            (lab.topic("evil"), b'{"samples": [{"seq": "one"}], "source": []}'),
            (lab.topic("evil", "status"), b'{"source": "nowhere", "gauges": 5}'),
            (lab.topic("evil", "deadletter"), b"\xff\xfe"),
            ("soclab-bridge/x/status", b"[1, 2]"),
        ]
        with Attacker(lab.settings("evil")) as evil:
            for topic, payload in malformed:
                evil.publish(topic, payload)
        with Attacker(lab.settings("liar")) as liar:  # then a valid message of another device
            good = data(lab, "liar", [{"seq": 400, "t_ns": time.time_ns(), "values": {"bat_v": 1.0}}])
            liar.publish(lab.topic("liar"), encoded(good))
        liar_key = f"{lab.site}/{ATTACK_NODE}/liar"
        view_alive = wait_until(lambda: liar_key in devices and devices[liar_key].samples >= 1, timeout_s=5)
        view.show()
    finally:
        view.stop()
    row = record("10", "malformed data, status and dead letters to the live view", len(malformed), lab, since)
    assert_harmless(row, lab)
    assert view_alive, "the view stopped counting after the malformed messages"
    assert view.model.malformed_total >= 3


# --- the publishers ---------------------------------------------------------------------------------


def test_finding_5_a_bad_confirmation_never_ends_a_publisher(lab: Pipeline, record: Callable) -> None:
    since = lab.marks()
    bad = [
        b'{"schema":"soclab.stored/1","consumer":"x","t_ns":1,"stored":[[1,' + b"9" * 5000 + b"]]}",
        b'{"schema":"soclab.stored/1","consumer":"x","t_ns":' + b"1" * 5000 + b"}",
        b"[" * 100_000,
        b"\xff" * 100,
    ]
    with Attacker(lab.settings("liar")) as liar:
        for payload in bad:
            liar.publish(lab.topic("eload", "stored", node=NODE), payload)
    time.sleep(2.0)
    row = record("5", "confirmations with 5000-digit integers, deep nesting, bad UTF-8", len(bad), lab, since)
    assert_harmless(row, lab)


def test_finding_7_forged_confirmations_delete_nothing(lab: Pipeline, record: Callable) -> None:
    """The e-load's publisher batches for 3 s, so its spool always holds samples it has not sent;
    confirmations naming them (from another consumer, and claiming the bridge's name) must not
    remove them."""
    since = lab.marks()
    inputs = 0
    with Attacker(lab.settings("liar")) as liar:
        for consumer in ("mallory", f"soclab-bridge/{lab.site}", "mallory", f"soclab-bridge/{lab.site}"):
            upto = lab.assigned("eload") + 250
            forged = {
                "schema": "soclab.stored/1",
                "consumer": consumer,
                "t_ns": time.time_ns(),
                "stored": [[0, upto]],
            }
            liar.publish(lab.topic("eload", "stored", node=NODE), json.dumps(forged))
            inputs += 1
            time.sleep(1.0)
    time.sleep(4.0)
    row = record("7", "confirmations of samples not yet sent, forged", inputs, lab, since)
    assert_harmless(row, lab)


def test_finding_6_a_deeply_nested_serial_line_does_not_stop_acquisition(
    lab: Pipeline, record: Callable
) -> None:
    since = lab.marks()
    lines = [
        b"# " + b'{"a":' * 1500 + b"1" + b"}" * 1500 + b"\n",  # 6 KB, nested 1500 deep
        b"# " + b"[" * 3000 + b"]" * 3000 + b"\n",
        b":85 Content. " + b"[" * 3000 + b"\n",
    ]
    for line in lines:
        lab.mppt.inject(line)
    try:
        flowing = True
        try:
            lab.wait_flowing(timeout_s=8)
        except AssertionError:
            flowing = False
        row = record("6", "deeply nested JSON on the MPPT's serial line", len(lines), lab, since, settle_s=5)
    finally:
        if not flowing:  # unfixed, acquisition has stopped for good: start the next attack afresh
            lab.children.kill("mppt")
            lab.children.restart("mppt")
            lab.wait_flowing()
    assert_harmless(row, lab)
    assert flowing, "the MPPT's samples stopped after the injected lines"


# --- the replay tool --------------------------------------------------------------------------------


def test_finding_11_hostile_recordings_and_forged_confirmations_do_not_fool_the_replay(
    lab: Pipeline, record: Callable, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    since = lab.marks()
    header = '"Time","Bat_V {device=""mppt-1210-hus"", name=""V""}"'
    hostile = {
        "empty.csv": b"",
        "no-time.csv": b'"When","x"\n1,2\n',
        "binary.csv": bytes(range(256)) * 100,
        "latin1.csv": (header + "\n1622238915000,12\xe9\n").encode("latin-1"),
        "nan.csv": (header + "\n1622238915000,NaN\n").encode(),
        "huge-cell.csv": (header + "\n1622238915000," + "9" * 5_000_000 + "\n").encode(),
        "cells.csv": (header + "\n1622238915000,1,2,3\n").encode(),
        "unknown.csv": b'"Time","Bat_T {device=""x""}"\n1622238915000,1\n',
    }
    argv = ["--site", lab.site, "--node", "pi-rec", "--host", lab.broker.host, "--port", str(lab.broker.port)]
    sniffer_topic = f"soclab/{lab.site}/pi-rec/+/replay"
    with listening(lab, sniffer_topic) as sniffer:
        for name, content in hostile.items():
            path = tmp_path / name
            path.write_bytes(content)
            assert replay.main([str(path), *argv]) == 2, name
        assert sniffer.received(0.5) is None  # nothing was published
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    rows = 2000
    good = tmp_path / "good.csv"
    good.write_text(
        header + "\n" + "".join(f"{1622238915000 + i * 1000},{12 + i / 10000:.4f}\n" for i in range(rows))
    )
    stop = threading.Event()

    def forge() -> None:  # confirmations of numbers the replay never sends, and repeats
        with Attacker(lab.settings("liar")) as liar:
            while not stop.is_set():
                for body in ({"stored": [[10**6, 10**6 + 5000]]}, {"dead_lettered": [[rows, rows * 2]]}):
                    message = {"schema": "soclab.stored/1", "consumer": "mallory", "t_ns": 1, **body}
                    liar.publish(f"soclab/{lab.site}/pi-rec/mppt/replay/stored", json.dumps(message))
                stop.wait(0.05)

    forger = threading.Thread(target=forge, daemon=True)
    forger.start()
    try:
        code = replay.main([str(good), *argv, "--samples-per-message", "10"])
    finally:
        stop.set()
        forger.join(timeout=10)
    out, _err = capsys.readouterr()
    row = record("11", "hostile recordings; forged replay confirmations", len(hostile) + 1, lab, since)
    assert_harmless(row, lab)
    assert code == 0, out
    assert f"sent {rows:,}, stored {rows:,}, refused 0" in out
    stored = lab.query("SELECT count(seq) FROM mppt WHERE node = 'pi-rec'")
    assert stored[0]["values"][0][1] == rows


# --- the edge: clock and disk -----------------------------------------------------------------------


def publisher_config(pipeline: Pipeline, device: str, spool: Path) -> Any:
    return load_publisher_config(
        None,
        env={
            "SOCLAB_SOURCE_SITE": pipeline.site,
            "SOCLAB_SOURCE_NODE": ATTACK_NODE,
            "SOCLAB_SOURCE_DEVICE": device,
            "SOCLAB_SOURCE_KIND": "mppt",
            "SOCLAB_MQTT_HOST": pipeline.broker.host,
            "SOCLAB_MQTT_PORT": str(pipeline.broker.port),
            "SOCLAB_SPOOL_PATH": str(spool),
            "SOCLAB_STATUS_INTERVAL_S": "1",
            "SOCLAB_MQTT_RESEND_GRACE_S": "3",
            "SOCLAB_CLOCK_CHECK_SYNC": "false",  # this machine's kernel says unsynchronised
        },
    )


@contextlib.contextmanager
def running(publisher: Publisher) -> Iterator[threading.Thread]:
    thread = threading.Thread(target=publisher.run, name="campaign-publisher", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        publisher.stop()
        thread.join(timeout=30)


def test_finding_12_a_backward_wall_clock_step_keeps_true_spacing(
    lab: Pipeline, record: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Pi without a battery-backed clock: its wall clock steps back an hour while a publisher
    runs (here the whole test process's clock; the pipeline's other processes keep theirs)."""
    since = lab.marks()
    real_ns, real_s = time.time_ns, time.time
    offset_ns = 0
    monkeypatch.setattr(time, "time_ns", lambda: real_ns() + offset_ns)
    monkeypatch.setattr(time, "time", lambda: real_s() + offset_ns / 1e9)
    publisher = Publisher(
        publisher_config(lab, "clock", tmp_path / "clock.sqlite"), SteadyInstrument(10, kind="mppt")
    )
    with running(publisher):
        time.sleep(2.0)
        offset_ns = -3600 * 10**9
        time.sleep(3.0)
    monkeypatch.undo()
    query = f"SELECT seq, flags FROM mppt WHERE device = 'clock' AND node = '{ATTACK_NODE}'"

    def samples() -> list[tuple[int, int, Any]]:  # time, seq, flags
        return sorted((int(v[0]), int(v[1]), v[2]) for s in lab.query(query) for v in s["values"])

    wait_until(lambda: len(samples()) >= 40, timeout_s=5)
    row = record("12", "the wall clock steps back an hour under a publisher", 1, lab, since)
    assert_harmless(row, lab)
    stored = samples()
    assert len(stored) >= 40, f"{len(stored)} samples stored of about 50"
    by_seq = sorted(stored, key=lambda s: s[1])
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(by_seq)]
    # 10 Hz: every gap 100 ms but the step's, where the time stamps follow the wall clock back an
    # hour (before: samples stamped 1 ns apart until the wall clock caught up, or not sent at all)
    odd = [i for i, gap in enumerate(gaps) if not 50_000_000 < gap < 500_000_000]
    assert len(odd) == 1, f"gaps that are not the sampling period: {[gaps[i] for i in odd][:5]} ns"
    (step,) = odd
    assert abs(gaps[step] + 3600 * 10**9) < 2 * 10**9, f"the step: {gaps[step]} ns"
    assert "clock_step" in (by_seq[step + 1][2] or ""), "the first sample after the step is not flagged"


def test_finding_13_a_full_spool_disk_is_loud_and_recovers(
    lab: Pipeline, record: Callable, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem for the spool needs root")
    since = lab.marks()
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=True, timeout=30)
    try:
        statuses: list[bytes] = []
        publisher = Publisher(
            publisher_config(lab, "disk", disk / "spool.sqlite"), SteadyInstrument(20, kind="mppt")
        )
        with listening(lab, lab.topic("disk", "status")) as watcher, running(publisher) as thread:
            time.sleep(1.5)
            filler = disk / "filler"
            subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, timeout=30)
            time.sleep(3.0)  # acquisition meets a full disk
            while (message := watcher.received(0.1)) is not None:
                statuses.append(message.payload)
            filler.unlink()  # space returns
            time.sleep(4.0)
            alive = thread.is_alive()
        rows = lab.query(f"SELECT count(seq) FROM mppt WHERE device = 'disk' AND node = '{ATTACK_NODE}'")
        stored = int(rows[0]["values"][0][1]) if rows else 0
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False, timeout=30)
    row = record("13", "the spool's filesystem fills up, then frees", 1, lab, since)
    assert_harmless(row, lab)
    assert alive, "the publisher ended on a full disk"
    loud = [s for s in statuses if any(w in s.lower() for w in (b"disk", b"space", b"full"))]
    assert loud, "no status said the disk was full"
    assert stored >= 100, f"{stored} samples stored: it did not recover when space returned"
