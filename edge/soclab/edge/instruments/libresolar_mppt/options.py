"""The MPPT publisher's ``[instrument]`` table, typed (see ``soclab.wire.settings``)."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from soclab.edge.instruments.kinds import Options
from soclab.edge.instruments.libresolar_mppt.fields import FIELDS

Positive = Annotated[float, Meta(gt=0)]


class MpptOptions(Options, frozen=True):
    """``port``: the serial device (the udev name ``/dev/soclab-mppt`` on the Pi).

    ``dialect`` is only a first guess of the firmware generation; the publications decide.
    ``extra_fields``: soclab names of items the firmware does not publish (the temperatures), asked
    for every ``extra_every_s`` (an environment variable lists them comma-separated).
    ``read_slice_s`` bounds one blocking serial read; lines longer than ``max_line`` bytes are
    dropped; at most ``max_buffered`` samples wait for ``read()``.
    """

    port: str
    baudrate: Annotated[int, Meta(gt=0)] = 115200
    dialect: Literal["v21", "v0.4", "v0.5", "v0.6"] | None = None
    request_timeout_s: Positive = 2.0
    identity_timeout_s: Positive = 1.0
    read_slice_s: Annotated[float, Meta(gt=0, le=1)] = 0.05
    max_buffered: Annotated[int, Meta(ge=1)] = 10_000
    max_line: Annotated[int, Meta(ge=64)] = 8192
    extra_fields: tuple[str, ...] = ()
    extra_every_s: Positive = 10.0

    def __post_init__(self) -> None:
        unknown = [name for name in self.extra_fields if name not in FIELDS]
        if unknown:
            raise ValueError(f"unknown extra_fields {unknown}; known: {', '.join(FIELDS)}")
        if len(set(self.extra_fields)) != len(self.extra_fields):
            raise ValueError(f"extra_fields lists a field twice: {list(self.extra_fields)}")
