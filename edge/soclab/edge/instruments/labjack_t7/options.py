"""The LabJack publisher's ``[instrument]`` table, typed (see ``soclab.wire.settings``).

Each ``[instrument.channels.<field>]`` table is one analog input: which AIN, its analog settings,
and its calibration (``raw``, ``lem_la55p`` or ``divider``) with that calibration's parameters
in the same table (``resistor_ohm``, ``turns``, ``gain``, ``offset_a`` / ``ratio``, ``gain``,
``offset_v``). ``[instrument.standin]`` wires the development stand-in (``backend = "standin"``).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from msgspec import Meta

from soclab.edge.instruments.kinds import Options
from soclab.edge.instruments.labjack_t7.calibration import calibration_from_config
from soclab.edge.instruments.labjack_t7.channels import (
    MAX_READ_S,
    MAX_STREAM_SAMPLES,
    ChannelSpec,
    check_fields,
)

_CALIBRATION_KEYS = ("resistor_ohm", "turns", "gain", "offset_a", "ratio", "offset_v")


class ChannelOptions(Options, frozen=True):
    """One channel; the calibration's keys that are not given take the calibration's defaults."""

    ain: str
    calibration: Literal["raw", "lem_la55p", "divider"] = "raw"
    range_v: float = 10.0
    resolution_index: int = 0
    negative_ch: int = 199
    resistor_ohm: float | None = None
    turns: int | None = None
    gain: float | None = None
    offset_a: float | None = None
    ratio: float | None = None
    offset_v: float | None = None

    def __post_init__(self) -> None:
        self.spec()  # every check of the channel and its calibration, at load time

    def spec(self) -> ChannelSpec:
        given = {key: getattr(self, key) for key in _CALIBRATION_KEYS if getattr(self, key) is not None}
        calibration = calibration_from_config(self.calibration, given)
        return ChannelSpec(
            self.ain,
            calibration=calibration,
            range_v=self.range_v,
            resolution_index=self.resolution_index,
            negative_ch=self.negative_ch,
        )


class LabJackOptions(Options, frozen=True):
    """``mode``: ``command`` (``rate_hz`` reads a second) or ``stream`` (``scan_rate_hz``, in reads
    of ``scans_per_read`` scans). ``backend``: ``ljm`` (LabJack's library) or ``standin``."""

    channels: dict[str, ChannelOptions]
    mode: Literal["command", "stream"] = "command"
    rate_hz: Annotated[float, Meta(gt=0, le=100)] = 1.0
    scan_rate_hz: Annotated[float, Meta(gt=0)] = 1000.0
    scans_per_read: Annotated[int, Meta(ge=1)] = 100
    stream_settling_us: Annotated[float, Meta(ge=0)] = 0.0
    stream_resolution_index: Annotated[int, Meta(ge=0, le=8)] = 0
    max_clock_offset_ms: Annotated[float, Meta(gt=0)] = 5.0
    device_type: str = "T7"
    connection_type: str = "USB"
    identifier: str = "ANY"
    backend: Literal["ljm", "standin"] = "ljm"
    standin: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.channels:
            raise ValueError("[instrument.channels.<field>] tables are needed, e.g. channels.bat_a")
        check_fields({name: channel.spec() for name, channel in self.channels.items()})
        if not (
            math.isfinite(self.scan_rate_hz) and self.scan_rate_hz * len(self.channels) <= MAX_STREAM_SAMPLES
        ):
            raise ValueError(f"scan_rate_hz * channels must be at most {MAX_STREAM_SAMPLES} samples/s")
        if self.scans_per_read / self.scan_rate_hz > MAX_READ_S:
            raise ValueError(f"scans_per_read must last at most {MAX_READ_S} s at scan_rate_hz")
        if self.standin is not None and self.backend != "standin":
            raise ValueError("[instrument.standin] is only for backend = 'standin'")

    def specs(self) -> dict[str, ChannelSpec]:
        return {name: channel.spec() for name, channel in self.channels.items()}
