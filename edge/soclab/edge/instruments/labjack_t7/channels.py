"""The LabJack's channels: which AIN, its analog settings, its calibration; and the rules a set of
channels must follow (each field's unit suffix is its calibration's unit, each AIN once)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field

from soclab.edge.instruments.labjack_t7.calibration import Calibration, Raw

SINGLE_ENDED = 199  # AIN#_NEGATIVE_CH for single-ended (GND)
T7_RANGES = (10.0, 1.0, 0.1, 0.01)
MAX_STREAM_SAMPLES = 100_000  # T7, all channels together, samples/s
MAX_READ_S = 5.0  # one eStreamRead blocks this long at most: a stop waits for it
FIELD = re.compile(r"^[a-z][a-z0-9_]{0,55}$")  # "skipped:<field>" must fit a 64-char flag
_AIN = re.compile(r"^AIN(\d{1,3})$")


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """One analog input: which AIN, its analog settings, its calibration."""

    ain: str
    _: KW_ONLY
    calibration: Calibration = field(default_factory=Raw)
    range_v: float = 10.0  # AIN#_RANGE: +-10, 1, 0.1 or 0.01 V
    resolution_index: int = 0  # AIN#_RESOLUTION_INDEX (command mode; 0 = default)
    negative_ch: int = SINGLE_ENDED  # AIN#_NEGATIVE_CH: 199 single-ended, or the odd neighbour

    def __post_init__(self) -> None:
        m = _AIN.match(self.ain)
        if not m:
            raise ValueError(f"ain must look like AIN1, got {self.ain!r}")
        n = int(m.group(1))
        if self.range_v not in T7_RANGES:
            raise ValueError(f"{self.ain}: range_v must be one of {T7_RANGES}, got {self.range_v!r}")
        if not isinstance(self.resolution_index, int) or not 0 <= self.resolution_index <= 12:
            raise ValueError(f"{self.ain}: resolution_index must be 0..12, got {self.resolution_index!r}")
        if self.negative_ch != SINGLE_ENDED and not (n % 2 == 0 and n <= 12 and self.negative_ch == n + 1):
            raise ValueError(
                f"{self.ain}: negative_ch must be {SINGLE_ENDED} (single-ended) or AIN{n + 1} for a"
                f" differential pair on an even AIN, got {self.negative_ch!r}"
            )

    @property
    def number(self) -> int:
        return int(self.ain[3:])

    def settings(self) -> list[tuple[str, float]]:
        n = self.number
        return [
            (f"AIN{n}_RANGE", self.range_v),
            (f"AIN{n}_RESOLUTION_INDEX", self.resolution_index),
            (f"AIN{n}_NEGATIVE_CH", self.negative_ch),
        ]

    def describe(self) -> str:
        wiring = "single-ended" if self.negative_ch == SINGLE_ENDED else f"- AIN{self.negative_ch}"
        return f"{self.ain} {wiring} +-{self.range_v:g} V, {self.calibration.describe()}"


def check_fields(channels: Mapping[str, ChannelSpec]) -> None:
    """Raise ValueError unless the channels can be read together (see the module doc)."""
    if not channels:
        raise ValueError("channels: at least one")
    for name, spec in channels.items():
        if not FIELD.match(name):
            raise ValueError(f"channel field {name!r} must match {FIELD.pattern}")
        unit = spec.calibration.unit
        if not name.endswith(f"_{unit}"):
            raise ValueError(
                f"channel {name!r} ({spec.calibration.kind}) gives {unit.upper()}: name it *_{unit}"
            )
    ains = [spec.ain for spec in channels.values()]
    if len(set(ains)) != len(ains):
        raise ValueError(f"each AIN at most once, got {ains}")
