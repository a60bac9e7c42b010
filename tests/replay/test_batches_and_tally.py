"""Cutting a recording into messages, and the bookkeeping that settles them: pure logic, with an
injected clock (the sender's I/O is tested against the real pipeline in test_replay_command)."""

from __future__ import annotations

import pytest

from soclab.dev.data import RECORDING
from soclab.tools.replay import Recording, Sample, batches, read_grafana_csv
from soclab.tools.replay.columns import Plan
from soclab.tools.replay.tally import Tally
from soclab.wire import validate

S = 1_000_000_000


def recording(**devices: list[int]) -> Recording:
    """Devices with samples at these times (seconds)."""
    return Recording(
        {d: [Sample(t * S, {"bat_v": 12.0}) for t in times] for d, times in devices.items()},
        {d: d for d in devices},
        Plan((), ()),
    )


def test_messages_are_valid_in_time_order_with_consecutive_seq_per_device() -> None:
    rec = read_grafana_csv(RECORDING)
    seqs: dict[str, list[int]] = {}
    last_t = 0
    for batch in batches(rec, "lab1", "pi-01", samples_per_message=7, seq_start=100):
        validate(batch.message, "soclab.data/1")
        device = batch.message["source"]["device"]
        assert batch.topic == f"soclab/lab1/pi-01/{device}/replay"
        assert 1 <= batch.size <= 7
        assert batch.t_ns >= last_t  # the devices interleaved as in a live lab
        last_t = batch.t_ns
        seqs.setdefault(device, []).extend(s["seq"] for s in batch.message["samples"])
        assert (batch.first, batch.last) == (seqs[device][-batch.size], seqs[device][-1])
    for device, samples in rec.samples.items():
        assert seqs[device] == list(range(100, 100 + len(samples)))


def test_a_message_spans_at_most_max_span_of_recorded_time() -> None:
    rec = recording(mppt=[0, 1, 2, 100, 101, 5000])
    cut = [(b.first, b.last) for b in batches(rec, "s", "n", samples_per_message=100, max_span_s=60)]
    assert cut == [(0, 2), (3, 4), (5, 5)]
    with pytest.raises(ValueError, match="at least 1"):
        list(batches(rec, "s", "n", samples_per_message=0))


def test_confirmations_settle_samples_once_and_forged_ones_change_nothing() -> None:
    rec = recording(mppt=list(range(10)), eload=list(range(4)))
    tally = Tally(grace_s=10, now=0)
    sent = list(batches(rec, "s", "n", samples_per_message=4))
    for batch in sent:
        tally.sent(batch, now=0)
    assert (tally.in_flight, tally.sent_samples, tally.unsettled) == (4, 14, 14)
    assert tally.confirmed("mppt", [[0, 3]], [], now=1) == 4
    assert tally.confirmed("mppt", [[0, 3]], [], now=1) == 0  # a repeat
    assert tally.confirmed("mppt", [[1000, 10**15]], [], now=1) == 0  # never sent
    assert tally.confirmed("labjack", [[0, 3]], [], now=1) == 0  # another device
    assert tally.confirmed("mppt", [[4, 5]], [[6, 6]], now=2) == 3  # part of a batch
    assert (tally.in_flight, tally.stored, tally.refused) == (3, 6, 1)
    assert tally.confirmed("mppt", [[7, 9]], [], now=3) == 3
    assert tally.confirmed("eload", [[0, 3]], [], now=3) == 4
    assert (tally.in_flight, tally.stored, tally.refused, tally.unsettled) == (0, 13, 1, 0)
    assert tally.ignored == 4 + (10**15 - 1000 + 1) + 4


def test_a_batch_overtaken_by_a_later_one_is_sent_again_after_the_grace() -> None:
    rec = recording(mppt=list(range(4)))
    tally = Tally(grace_s=10, now=0)
    first, second = batches(rec, "s", "n", samples_per_message=2)
    tally.sent(first, now=0)
    tally.sent(second, now=0)
    tally.confirmed("mppt", [[2, 3]], [], now=5)  # the second: the first was lost on the way
    assert tally.resend_due(now=14) == []
    assert tally.resend_due(now=15) == [first]
    assert tally.resend_due(now=16) == []  # its clock restarted
    tally.confirmed("mppt", [[0, 1]], [], now=17)
    assert (tally.in_flight, tally.stored, tally.resent_batches) == (0, 4, 1)


def test_after_a_silence_everything_in_flight_is_sent_again() -> None:
    rec = recording(mppt=list(range(4)))
    tally = Tally(grace_s=10, now=0)
    first, second = batches(rec, "s", "n", samples_per_message=2)
    tally.sent(first, now=0)
    tally.sent(second, now=8)
    assert tally.resend_due(now=9.9) == []
    assert tally.resend_due(now=10) == [first]  # quiet for 10 s, and sent 10 s ago
    assert tally.resend_due(now=18) == [second]
    tally.confirmed("mppt", [[0, 1]], [], now=19)
    assert tally.resend_due(now=27) == []  # the bridge spoke 8 s ago
