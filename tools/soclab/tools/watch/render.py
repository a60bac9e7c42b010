"""The monitor's screen, drawn from the model with rich: alerts first, then devices, bridges,
runs, dead letters and malformed messages; ``compact`` fits a small terminal (one line each).

Everything here reads the model and builds text; nothing here changes it. ``extra`` lines come
from whoever embeds the monitor (``make lab`` adds what its own InfluxDB holds).
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterable
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from soclab.tools.watch.kinds import headline, unit_of
from soclab.tools.watch.model import Device, IntakeStats, Model, ago, duration

LAST_ROWS = 5  # dead letters and malformed messages shown
COMPACT_WIDTH = 100  # narrower terminals get the compact view


def condition(model: Model, device: Device, now: float) -> tuple[str, str]:
    """(word, style) for a device's state cell: online, silent, offline or unknown, with how long."""
    word = model.condition(device, now)
    if word == "offline":
        since = "" if device.state_since is None else f" {duration(now - device.state_since)}"
        return f"offline{since}", "bold red"
    if word == "silent":
        return f"silent {duration(device.quiet_for(now))}", "bold red"
    return word, "green" if word == "online" else "yellow"


def render(
    model: Model,
    now: float,
    *,
    title: str,
    compact: bool = False,
    intake: IntakeStats | None = None,
    extra: Iterable[str] = (),
) -> RenderableType:
    alerts = model.alerts(now, intake)
    parts: list[RenderableType] = [_header(model, now, title, intake)]
    if alerts:
        parts.append(Text(f"alerts: {len(alerts)}", style="bold red"))
        shown = alerts[:4] if compact else alerts[:20]
        for alert in shown:
            style = "red" if alert.severity == "error" else "yellow"
            parts.append(
                Text(f" ! {alert.subject}: {alert.text}", style=style, overflow="ellipsis", no_wrap=True)
            )
        if len(alerts) > len(shown):
            parts.append(Text(f"   ... and {len(alerts) - len(shown)} more", style="red"))
    else:
        parts.append(Text("alerts: none", style="green"))
    if compact:
        parts.extend(_compact(model, now))
    else:
        parts.append(_devices(model, now))
        if model.bridges:
            parts.append(_bridges(model, now))
        if model.runs:
            parts.append(_runs(model, now))
        parts.extend(_recent(model, now))
    parts.extend(Text(line) for line in extra)
    return Group(*parts)


def plain(renderable: RenderableType, width: int = 160) -> str:
    """The screen as text without colours (for a pipe, a log file, or a test)."""
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    console.print(renderable)
    out = console.file
    assert isinstance(out, io.StringIO)
    return out.getvalue()


# --- parts ---------------------------------------------------------------------------------------


def _header(model: Model, now: float, title: str, intake: IntakeStats | None) -> Text:
    clock = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    text = Text(f"soclab watch  {title}  {clock}", style="bold")
    text.append(f"   {model.rate.rate(now):.0f} msg/s  malformed {model.malformed_total}")
    text.append(f"  dead letters {model.dead_letter_total}")
    if intake is not None:
        text.append(f"  queue {intake.queued}")
    return text


def _devices(model: Model, now: float) -> Table:
    table = Table(title="devices", title_justify="left", expand=False, pad_edge=False, box=None)
    for name, justify in (
        ("device", "left"),
        ("kind", "left"),
        ("state", "left"),
        ("data", "right"),  # how long ago the last data message came
        ("samples/s", "right"),
        ("last values", "left"),
        ("seq", "right"),
        ("missing", "right"),
        ("dup", "right"),
        ("spool", "right"),
        ("backlog", "right"),
        ("errors", "left"),
    ):
        wraps = name in ("last values", "errors")  # these give way when the terminal is narrow
        table.add_column(name, justify=justify, no_wrap=not wraps, min_width=None if wraps else len(name))  # type: ignore[arg-type]
    for key in sorted(model.devices):
        device = model.devices[key]
        word, style = condition(model, device, now)
        gauges = device.gauges
        table.add_row(
            key,
            device.kind or "?",
            Text(word, style=style),
            "-" if device.last_data_at is None else duration(now - device.last_data_at),
            f"{device.rate.rate(now):.1f}",
            values_text(device),
            "-" if device.seqs.highest is None else str(device.seqs.highest),
            _count(device.seqs.missing()),
            _count(device.seqs.duplicates),
            _number(gauges.get("spool_depth")),
            _backlog(gauges),
            _errors(device),
        )
    return table


def _bridges(model: Model, now: float) -> Table:
    table = Table(title="bridges", title_justify="left", pad_edge=False, box=None)
    for name in (
        "bridge",
        "state",
        "msg/s",
        "points/s",
        "received",
        "written",
        "invalid",
        "write errors",
        "lag median/max (1 min)",
        "dead letters",
        "last error",
    ):
        table.add_column(name, justify="left" if name in ("bridge", "state", "last error") else "right")
    for bridge_id in sorted(model.bridges):
        bridge = model.bridges[bridge_id]
        counters = bridge.counters
        lag = bridge.lag.median_max(now)
        state_style = {"online": "green", "offline": "bold red"}.get(bridge.state, "yellow")
        table.add_row(
            bridge_id,
            Text(bridge.state, style=state_style),
            _rate(bridge.messages_rate.rate(now)),
            _rate(bridge.points_rate.rate(now)),
            _number(counters.get("messages_received")),
            _number(counters.get("points_written")),
            _number(counters.get("messages_invalid")),
            _number(counters.get("write_errors")),
            "-" if lag is None else f"{lag[0]:.2f} / {lag[1]:.2f} s",
            str(bridge.dead_letters),
            bridge.last_error or "",
        )
    return table


def _runs(model: Model, now: float) -> Table:
    table = Table(title="runs", title_justify="left", pad_edge=False, box=None)
    for name in ("node", "state", "run", "step", "until", "watching", "last event", "heard"):
        table.add_column(name, no_wrap=name in ("node", "state", "heard"))
    for key in sorted(model.runs):
        run = model.runs[key]
        current = _table(run.status.get("run"))
        watching = _table(current.get("watching"))
        step = watched = ""
        if current:
            elapsed = duration(float(current.get("step_elapsed_s") or 0))
            step = f"cycle {current.get('cycle', '?')} step {current.get('step_index', '?')}: "
            step += f"{current.get('description', '')} ({elapsed})"
        if watching:
            fallback = " (fallback)" if watching.get("fallback") else ""
            watched = f"{watching.get('quantity')} {_number(watching.get('value'))}"
            watched += f" on {watching.get('channel')}{fallback}"
        event = run.last_event()
        last = f"{event.get('event')}: {event.get('reason', '')}" if event else ""
        table.add_row(
            key,
            str(run.status.get("state", "?")),
            str(current.get("name", "")),
            step,
            str(current.get("until", "")),
            watched,
            Text(last, style="bold red" if run.limit_tripped() else ""),
            ago(run.at, now),
        )
    return table


def _table(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _recent(model: Model, now: float) -> list[RenderableType]:
    parts: list[RenderableType] = []
    if model.dead_letters:
        table = Table(title="dead letters (latest)", title_justify="left", pad_edge=False, box=None)
        for name in ("when", "topic", "reason", "bytes"):
            table.add_column(name, overflow="ellipsis", no_wrap=name != "reason")
        for letter in list(model.dead_letters)[-LAST_ROWS:]:
            table.add_row(ago(letter.at, now), letter.topic, letter.reason, str(letter.size))
        parts.append(table)
    if model.malformed:
        table = Table(title="malformed messages (latest)", title_justify="left", pad_edge=False, box=None)
        for name in ("when", "topic", "reason", "bytes"):
            table.add_column(name, overflow="ellipsis", no_wrap=name != "reason")
        for bad in list(model.malformed)[-LAST_ROWS:]:
            table.add_row(ago(bad.at, now), bad.topic, bad.reason, str(bad.size))
        parts.append(table)
    return parts


def _compact(model: Model, now: float) -> list[RenderableType]:
    lines: list[RenderableType] = []
    for key in sorted(model.devices):
        device = model.devices[key]
        word, style = condition(model, device, now)
        line = Text(f"{key} ", no_wrap=True, overflow="ellipsis")
        line.append(word, style=style)
        line.append(f" {device.rate.rate(now):.1f}/s {values_text(device, headline_only=True)}")
        lines.append(line)
    for bridge_id in sorted(model.bridges):
        bridge = model.bridges[bridge_id]
        lag = bridge.lag.median_max(now)
        lag_text = "" if lag is None else f" lag {lag[0]:.1f}/{lag[1]:.1f} s"
        lines.append(Text(f"bridge {bridge_id} {bridge.state}{lag_text}", no_wrap=True, overflow="ellipsis"))
    return lines


# --- cells ---------------------------------------------------------------------------------------


def values_text(device: Device, headline_only: bool = True) -> str:
    """The device's last values with their units, headline fields first."""
    values = device.last_values
    names = [n for n in headline(device.kind) if n in values]
    if not headline_only:
        names += sorted(n for n in values if n not in names)
    text = "  ".join(f"{name}\u00a0{_value(values[name])}{_unit(name, device.kind)}" for name in names)
    if device.last_flags:
        text += "  flags " + ",".join(device.last_flags)
    return text


def _unit(name: str, kind: str | None) -> str:
    unit = unit_of(name, kind)
    return f"\u00a0{unit}" if unit else ""


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)


def _number(value: Any) -> str:
    if value is None:
        return "-"
    return _value(value)


def _count(value: int) -> Text:
    return Text(str(value), style="red" if value else "")


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _backlog(gauges: dict[str, Any]) -> str:
    samples, age = gauges.get("backlog_samples"), gauges.get("spool_oldest_age_s")
    if samples is None and age is None:
        return "-"
    age_text = "" if not isinstance(age, int | float) else f" ({duration(age)})"
    return f"{_number(samples)}{age_text}"


def _errors(device: Device) -> Text:
    parts = []
    if device.malformed:
        parts.append(f"malformed {device.malformed}")
    if device.dead_letters:
        parts.append(f"dead letters {device.dead_letters}")
    bad_counters = {
        k: v
        for k, v in device.counters.items()
        if v
        and isinstance(v, int)
        and any(w in k for w in ("error", "dropped", "rejected", "invalid", "fail"))
    }
    parts.extend(f"{k} {v}" for k, v in sorted(bad_counters.items()))
    if device.last_error:
        parts.append(device.last_error)
    result = device.last_result
    if result and result.get("outcome") != "done":
        parts.append(f"last command {result.get('command', '?')}: {result.get('outcome', '?')}")
    return Text("; ".join(parts), style="red" if parts else "")
