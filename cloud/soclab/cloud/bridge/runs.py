"""What runs send, as InfluxDB points: the run journal, command results, the run status.

``run_events``: one point per run event of a ``soclab.journal/1`` message (published by a node's
run controller on ``soclab/<site>/<node>/run/journal``, from its durable journal):

===============  ==========================================================================
tags             ``site``, ``node`` (the source's, which must equal the topic's), ``run``
fields           ``event`` (**string**: start, step, limit, stop, end, resume, safe), ``cycle``,
                 ``step`` (the running step count, BDF's "Step Count"), ``step_index`` (in its
                 cycle) as **integers**; ``description``, ``reason``, ``channel`` (**string**);
                 ``value`` (**float**, the watched value at the transition); each when present
time             the transition (the Pi's clock; strictly increasing in a journal)
===============  ==========================================================================

``commands``: one point per command, from the journal's command records (what a run commanded
its instruments) and from every ``soclab.cmd.result/1`` on ``.../<device>/cmd/result`` (what an
operator commanded, or a run controller answered): tags ``site``, ``node``, ``device``; fields
``id``, ``command``, ``issuer``, ``outcome`` (done, refused, failed), ``reason`` (**string**),
``issued_ns`` (**integer**); time: the result's. A command a run sent over the Pi's local socket
is in the journal only, never on ``cmd/result``: no command is stored twice.

``run_status``: one point per ``soclab.run.status/1`` (retained on ``.../run/status``): tags
``site``, ``node``; fields ``state`` and, while a run is active, ``run``, ``description``
(**string**), ``cycle``, ``step`` (**integer**), ``elapsed_s``, ``step_elapsed_s`` and
``value`` (the live value it watches, **float**).

A journal message is confirmed like a data message, with ``soclab.stored/1`` on
``soclab/<site>/<node>/run/stored`` naming the records' sequence numbers: the run controller
keeps every record until then. Anything invalid is ``Rejected`` (and dead-lettered).
"""

from __future__ import annotations

from typing import Any

from influxdb_client import Point, WritePrecision

from soclab.cloud.bridge.intake import Rejected, merge_ranges
from soclab.wire import (
    CMD_RESULT_SCHEMA,
    JOURNAL_SCHEMA,
    RUN_STATUS_SCHEMA,
    InvalidMessage,
    Topic,
    TopicError,
    decode,
)

KINDS = ("journal", "cmd/result")  # topic kinds the bridge subscribes to for runs
_EVENT_INTS = ("cycle", "step", "step_index")
_EVENT_STRINGS = ("description", "reason", "channel")


def is_run_topic(topic: str) -> bool:
    """Whether a topic carries what this module stores (journal, results, a run's status)."""
    return topic.endswith(("/journal", "/cmd/result", "/run/status"))


def confirmations(topic: str) -> str:
    """Where a journal's records are confirmed: ``soclab/<site>/<node>/run/stored``."""
    return str(_topic(topic).with_kind("stored"))


def lines(topic: str, payload: bytes) -> tuple[list[str], list[list[int]]]:
    """The points of a run message and, for a journal, the sequence numbers to confirm."""
    where = _topic(topic)
    if where.kind == "journal":
        return _journal(where, payload)
    if where.kind == "cmd/result":
        return [_result(where, payload)], []
    if where.kind == "status" and where.device == "run":
        return [_status(where, payload)], []
    raise Rejected(f"topic {topic!r} is not a run topic")


def _journal(where: Topic, payload: bytes) -> tuple[list[str], list[list[int]]]:
    message = _decode(payload, JOURNAL_SCHEMA)
    _same_source(where, message["source"])
    out = []
    for record in message["records"]:
        if "run_event" in record:
            out.append(_event_point(where, record["run_event"], record["t_ns"]))
        else:
            out.append(_command_point(where, record["command"]["device"], record["command"], record["t_ns"]))
    return out, merge_ranges((r["seq"], r["seq"]) for r in message["records"])


def _event_point(where: Topic, event: dict[str, Any], t_ns: int) -> str:
    point = Point("run_events").tag("site", where.site).tag("node", where.node).tag("run", event["run"])
    point.field("event", event["event"])
    for name in _EVENT_INTS:
        if name in event:
            point.field(name, int(event[name]))
    for name in _EVENT_STRINGS:
        if name in event:
            point.field(name, str(event[name]))
    if "value" in event:
        point.field("value", float(event["value"]))
    return _line(point, t_ns)


def _command_point(where: Topic, device: str, command: dict[str, Any], t_ns: int) -> str:
    point = Point("commands").tag("site", where.site).tag("node", where.node).tag("device", device)
    for name in ("id", "command", "issuer", "outcome", "reason"):
        point.field(name, str(command[name]))
    point.field("issued_ns", int(command["issued_ns"]))
    return _line(point, t_ns)


def _result(where: Topic, payload: bytes) -> str:
    result = _decode(payload, CMD_RESULT_SCHEMA)
    target = result["target"]
    if (target["site"], target["node"], target["device"]) != (where.site, where.node, where.device):
        raise Rejected(f"result for {target['site']}/{target['node']}/{target['device']} on the topic of "
                       f"{where.site}/{where.node}/{where.device}")  # fmt: skip
    return _command_point(where, where.device, result, result["t_ns"])


def _status(where: Topic, payload: bytes) -> str:
    status = _decode(payload, RUN_STATUS_SCHEMA)
    _same_source(where, status["source"])
    point = (
        Point("run_status").tag("site", where.site).tag("node", where.node).field("state", status["state"])
    )
    run = status.get("run")
    if run is not None:
        point.field("run", run["id"]).field("description", run["description"])
        point.field("cycle", int(run["cycle"])).field("step", int(run["step"]))
        point.field("elapsed_s", float(run["elapsed_s"])).field(
            "step_elapsed_s", float(run["step_elapsed_s"])
        )
        value = run.get("watching", {}).get("value")
        if value is not None:
            point.field("value", float(value))
    return _line(point, status["t_ns"])


def _line(point: Point, t_ns: int) -> str:
    return str(point.time(t_ns, WritePrecision.NS).to_line_protocol())


def _topic(topic: str) -> Topic:
    try:
        return Topic.parse(topic)
    except TopicError as exc:
        raise Rejected(f"topic: {exc}") from None


def _decode(payload: bytes, schema: str) -> dict[str, Any]:
    try:
        return decode(payload, schema)
    except InvalidMessage as exc:
        raise Rejected(exc.reason) from None


def _same_source(where: Topic, source: dict[str, Any]) -> None:
    if (source["site"], source["node"], source["device"]) != (where.site, where.node, where.device):
        named = f"{source['site']}/{source['node']}/{source['device']}"
        raise Rejected(f"source {named} does not match the topic {where}")
