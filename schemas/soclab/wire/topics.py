"""Topic names: ``soclab/<site>/<node>/<device>/<kind>``.

Kinds: ``data`` (live samples), ``status`` (retained), ``stored`` (the bridge's confirmations),
``deadletter``, ``cmd`` and ``cmd/result``; ``replay`` is recorded data that an operator replays
(``soclab replay``: same ``soclab.data/1`` payload, stored without the live time window, kept out
of live lag), confirmed on ``replay/stored``. Devices cannot publish ``replay`` (broker ACL).

A bridge is not a device: its own topics are ``soclab-bridge/<id>/status`` and
``soclab-bridge/<id>/deadletter`` (``bridge_topic``), and it signs its confirmations and dead
letters as consumer ``soclab-bridge/<id>`` (``bridge_consumer``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ROOT = "soclab"
# replay, replay/stored: recorded data published by ``soclab replay`` and its confirmations, a
# path of its own so that the bridge keeps old time stamps out of live checks and lag. journal:
# a node's run controller's journal (device ``run``), confirmed on ``stored`` like data.
KINDS = ("data", "status", "stored", "deadletter", "cmd", "cmd/result", "replay", "replay/stored", "journal")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


BRIDGE_ROOT = "soclab-bridge"


def bridge_consumer(bridge_id: str) -> str:
    """What bridge ``bridge_id`` writes as ``consumer`` in its confirmations and dead letters."""
    return f"{BRIDGE_ROOT}/{bridge_id}"


def bridge_topic(bridge_id: str, kind: str) -> str:
    """A bridge's own topic: ``kind`` is ``status`` or ``deadletter``."""
    return f"{BRIDGE_ROOT}/{bridge_id}/{kind}"


class TopicError(ValueError):
    """A topic or a topic level that does not follow the layout."""


@dataclass(frozen=True, slots=True)
class Topic:
    site: str
    node: str
    device: str
    kind: str = "data"

    def __post_init__(self) -> None:
        for level in ("site", "node", "device"):
            value = getattr(self, level)
            if not isinstance(value, str) or not _NAME.fullmatch(value):
                raise TopicError(f"{level} {value!r} is not a valid topic level ([a-z0-9][a-z0-9_-]*)")
        if self.kind not in KINDS:
            raise TopicError(f"kind {self.kind!r} is not one of {', '.join(KINDS)}")

    def __str__(self) -> str:
        return f"{ROOT}/{self.site}/{self.node}/{self.device}/{self.kind}"

    def with_kind(self, kind: str) -> Topic:
        return Topic(self.site, self.node, self.device, kind)

    @classmethod
    def parse(cls, topic: str) -> Topic:
        parts = topic.split("/", 4)
        if len(parts) != 5 or parts[0] != ROOT:
            raise TopicError(f"topic {topic!r} is not {ROOT}/<site>/<node>/<device>/<kind>")
        return cls(*parts[1:])

    @staticmethod
    def subscription(kind: str, site: str = "+") -> str:
        """The filter for one kind of message of every device (of one site, or all)."""
        return f"{ROOT}/{site}/+/+/{kind}"
