"""The acquisition clock when the wall clock steps, and before it is synchronised (issue 11,
finding 12). Injected clocks: wall time and monotonic time are the test's, moved by hand."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest
from transcript import THINGSET, Transcript, Unsolicited, thingset_steps

from soclab.dev.sim.battery import Battery
from soclab.dev.sim.instruments import labjack_t7 as standin
from soclab.dev.sim.steady import SteadyInstrument
from soclab.edge.instruments import build, kind
from soclab.edge.instruments.clock import STEP, UNSYNCED, AcquisitionClock, kernel_synchronised
from soclab.edge.instruments.libresolar_mppt.driver import MpptDriver
from soclab.edge.instruments.libresolar_mppt.options import MpptOptions
from soclab.edge.publisher.config import load
from soclab.edge.publisher.service import Publisher

T0 = 1_700_000_000_000_000_000  # wall time at the start
S = 1_000_000_000  # one second in ns
HOUR = 3600 * S


class Clocks:
    """A wall clock and a monotonic clock that move only when told; the wall clock can step."""

    def __init__(self) -> None:
        self.wall = T0
        self.mono = 5 * S
        self.reads = 0
        self.synced: bool | None = False
        self.probes = 0

    def wall_ns(self) -> int:
        return self.wall

    def monotonic_ns(self) -> int:
        self.reads += 1
        return self.mono

    def tick(self, ns: int) -> None:
        self.wall += ns
        self.mono += ns

    def synchronised(self) -> bool | None:
        self.probes += 1
        return self.synced

    def clock(self, **options: Any) -> AcquisitionClock:
        return AcquisitionClock(wall_ns=self.wall_ns, monotonic_ns=self.monotonic_ns, **options)


@pytest.mark.parametrize("step", [-HOUR, HOUR, -2 * S], ids=["back-an-hour", "forward-an-hour", "back-2s"])
def test_a_step_of_the_wall_clock_keeps_true_spacing_and_is_flagged_once(step: int) -> None:
    clocks = Clocks()
    clock = clocks.clock()
    before = []
    for _ in range(5):
        clocks.tick(S)
        before.append(clock.stamp())
    clocks.wall += step  # the time daemon (or a person) sets the clock
    after = []
    for _ in range(3600):  # an hour of one-second samples after it
        clocks.tick(S)
        after.append(clock.stamp())
    stamps = [s.t_ns for s in before + after]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert gaps == [S] * 4 + [S + step] + [S] * 3599  # true spacing on both sides, the step once
    assert after[0].t_ns == clocks.wall - 3599 * S  # on the new time from the first sample
    assert [s.flags for s in before + after] == [()] * 5 + [(STEP,)] + [()] * 3599
    assert after[0].step_ns == step
    assert clock.steps == 1


def test_jitter_below_the_tolerance_is_no_step_and_stamps_strictly_increase() -> None:
    clocks = Clocks()
    clock = clocks.clock(step_tolerance_ns=10_000_000)
    stamps = []
    for i in range(100):
        clocks.mono += 1_000_000
        clocks.wall += 1_000_000 + (3_000_000 if i % 2 else -3_000_000)  # +-3 ms: not a step
        stamps.append(clock.stamp())
        stamps.append(clock.stamp())  # twice in the same nanosecond
    assert clock.steps == 0
    assert all(b.t_ns > a.t_ns for a, b in itertools.pairwise(stamps))
    assert stamps[-1].t_ns - stamps[0].t_ns < 101_000_000  # +1 ns now and then, no more


def test_a_pause_between_reading_the_two_clocks_is_not_a_step() -> None:
    """A thread preempted between reading the monotonic and the wall clock would see them disagree."""
    clocks = Clocks()
    clock = clocks.clock()
    real = clocks.monotonic_ns
    calls = itertools.count()

    def paused() -> int:  # the first pair read: 50 ms pass between the two monotonic reads
        value = real()
        if next(calls) == 0:
            clocks.mono += 50_000_000
        return value

    clocks.monotonic_ns = paused  # type: ignore[method-assign]
    clocks.tick(S)
    first = clock.stamp()
    assert (first.step_ns, clock.steps) == (0, 0)


def test_samples_before_the_clock_is_synchronised_are_flagged() -> None:
    clocks = Clocks()
    clock = clocks.clock(synchronised=clocks.synchronised, sync_check_ns=S)
    flags = []
    for i in range(40):
        clocks.tick(S // 4)
        if i == 20:  # the time daemon reaches its server: it steps the clock and marks it synchronised
            clocks.wall += 3 * 24 * HOUR
            clocks.synced = True
        flags.append(clock.stamp().flags)
    assert flags[:20] == [(UNSYNCED,)] * 20
    assert flags[20] == (STEP,)  # the step forces a look at the synchronisation
    assert flags[21:] == [()] * 19
    assert clocks.probes <= 1 + 40 // 4 + 1  # asked at most once a second (and at a step)


def test_without_a_probe_nothing_is_flagged_unsynced() -> None:
    clocks = Clocks()
    clock = clocks.clock()
    assert clock.stamp().flags == ()
    assert clock.in_sync is None


def test_the_kernels_answer_is_a_boolean_on_linux() -> None:
    assert kernel_synchronised() in (True, False)


# --- through the drivers ---------------------------------------------------------------------------------
V21 = THINGSET / "v21.0-transcript.txt"


def test_the_mppt_driver_keeps_true_spacing_across_a_backward_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, ``now_ns()`` stamped ``last + 1 ns`` while the wall clock was behind: an hour of
    samples after a backward step of an hour would be squashed into nanoseconds. The process's
    clocks are replaced (``time.time_ns``, ``time.monotonic_ns``); the port is a transcript."""
    clocks = Clocks()
    monkeypatch.setattr(time, "time_ns", clocks.wall_ns)
    monkeypatch.setattr(time, "monotonic_ns", clocks.monotonic_ns)
    port = Transcript([
        *thingset_steps(V21)[:1],
        *(Unsolicited(b'# {"Bat_V":12.%d}\n' % i) for i in range(5)),
    ])  # fmt: skip
    driver = MpptDriver(
        MpptOptions(port="/dev/ttyACM0", read_slice_s=0.01, request_timeout_s=0.5, identity_timeout_s=0.5),
        serial_factory=port,
    )
    driver.open()
    readings = []
    for i in range(5):
        clocks.tick(S)
        if i == 2:
            clocks.wall -= HOUR
        (reading,) = driver.read(0.5)
        readings.append(reading)
    gaps = [b.t_ns - a.t_ns for a, b in itertools.pairwise(readings)]
    assert gaps == [S, S - HOUR, S, S]
    assert [r.flags for r in readings] == [(), (), (STEP,), (), ()]
    assert driver.health.counters["clock_steps"] == 1
    port.assert_done()


@pytest.mark.parametrize("step", [-HOUR, HOUR], ids=["back-an-hour", "forward-an-hour"])
def test_a_labjack_stream_follows_a_step_at_once(step: int) -> None:
    """The stream's stamps are counted from its start: a step of the wall clock moves them by the
    step at the next read, both ways (its drift correction alone would take days to catch up
    with an hour going back), and the first scan after it is flagged."""
    standin.configure(Battery(soc=0.6), resistor_ohm=150.0, divider_ratio=2.0, seed=3)
    offset = [0]
    driver = build(
        "labjack",
        kind("labjack").load_options({
            "mode": "stream", "scan_rate_hz": 1000.0, "scans_per_read": 50, "backend": "standin",
            "channels": {"bat_v": {"ain": "AIN2", "calibration": "divider", "ratio": 2.0}},
        })
    )  # fmt: skip
    driver.clock = AcquisitionClock(wall_ns=lambda: time.time_ns() + offset[0])
    try:
        with driver:
            before = []
            while len(before) < 500:
                before += driver.read(timeout=0.5)
            offset[0] = step
            after = []
            while len(after) < 500:
                after += driver.read(timeout=0.5)
    finally:
        standin.reset()
    stamps = [r.t_ns for r in before + after]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    across = len(before) - 1
    assert gaps[across] == pytest.approx(step + 1_000_000, abs=20_000_000)  # the step, once
    # 1 ms apart otherwise (give or take the drift correction on a busy machine): never squashed
    assert all(0 < g < 50_000_000 for i, g in enumerate(gaps) if i != across)
    assert [r for r in after if STEP in r.flags] == [after[0]]
    assert driver.health.counters["clock_steps"] == 1


@pytest.mark.parametrize(
    ("env", "probe"), [({}, kernel_synchronised), ({"SOCLAB_CLOCK_CHECK_SYNC": "false"}, None)]
)
def test_the_publisher_gives_its_instrument_the_kernels_probe_unless_told_not_to(
    tmp_path: Path, env: dict[str, str], probe: object
) -> None:
    config = load(None, env={
        "SOCLAB_SOURCE_SITE": "lab1", "SOCLAB_SOURCE_NODE": "pi-01",
        "SOCLAB_SOURCE_DEVICE": "mppt", "SOCLAB_SOURCE_KIND": "mppt",
        "SOCLAB_SPOOL_PATH": str(tmp_path / "spool.sqlite"), **env,
    })  # fmt: skip
    instrument = SteadyInstrument(kind="mppt")
    publisher = Publisher(config, instrument)
    try:
        assert instrument.clock.synchronised is probe
    finally:
        publisher.spool.close()
