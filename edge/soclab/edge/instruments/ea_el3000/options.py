"""The e-load publisher's ``[instrument]`` table, typed (see ``soclab.wire.settings``)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from soclab.edge.instruments.kinds import Options


class EaLoadOptions(Options, frozen=True):
    """``port``: the serial device (the udev name ``/dev/soclab-eload`` on the Pi).

    ``node``/``cast`` address the load as the lab's scripts did (node 0, cast bit set); ``node=1,
    cast=false`` gives the other captured form. ``poll_hz``: actual values and Ah counter per
    second. An answer is awaited ``answer_timeout_s``; a failed one is asked ``retries`` more times.
    """

    port: str
    node: Annotated[int, Meta(ge=0, le=255)] = 0
    cast: bool = True
    poll_hz: Annotated[float, Meta(gt=0, le=20)] = 2.0
    answer_timeout_s: Annotated[float, Meta(gt=0, le=10)] = 0.25
    retries: Annotated[int, Meta(ge=0, le=10)] = 2
