"""Topic names: ``soclab/<site>/<node>/<device>/<kind>``."""

from __future__ import annotations

import re
from dataclasses import dataclass

ROOT = "soclab"
KINDS = ("data", "status", "stored", "deadletter", "cmd", "cmd/result", "journal")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


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
