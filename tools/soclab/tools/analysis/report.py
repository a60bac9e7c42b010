"""``soclab report``: one self-contained HTML page per run, made to be looked at.

Plots (matplotlib, embedded as PNG, so the page needs nothing beside it and no script): battery
voltage and current from all three instruments, the reference SoC against the MPPT's own, and the
instruments' currents against the reference's; then the step and cycle tables, the instruments'
agreement with the suggested LabJack calibration, the e-load's Ah cross-check, the SoC anchor and
whatever could not be computed. ``--png`` also renders the page with headless Chromium (Debian's
``chromium``) into a picture, for a message or a lab book.
"""

from __future__ import annotations

import base64
import html
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from soclab.tools.analysis import Analysis, iso
from soclab.tools.analysis.align import asof
from soclab.tools.analysis.cli import parser, run
from soclab.tools.influx import InfluxClient

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MAX_POINTS = 4000  # per line in a plot: more only costs bytes
COLOURS = {"labjack": "#1f77b4", "mppt": "#d62728", "eload": "#2ca02c", "reference": "#000000"}
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def render_html(result: Analysis) -> str:
    import matplotlib

    matplotlib.use("Agg")
    span = result.data.span
    title = f"soclab run report: {span.site}/{span.node} " + (f"run {span.run}" if span.run else "time range")
    ref = result.reference
    parts = [
        f"<h1>{_e(title)}</h1>",
        f"<p class=meta>{_e(iso(span.start_ns))} .. {_e(iso(span.end_ns))} &middot; instruments: "
        + ", ".join(
            f"{_e(k)} <b>{_e(d)}</b> ({len(result.data.frames[k])} samples)"
            for k, d in result.data.devices.items()
        )
        + f" &middot; reference current: {_e(result.options.reference)} &middot; capacity"
        f" {result.battery.capacity_ah:g} Ah</p>",
    ]
    if result.problems:
        parts.append(
            "<div class=problems>" + "".join(f"<p>&#9888; {_e(p)}</p>" for p in result.problems) + "</div>"
        )
    parts.append("<h2>Battery voltage and current</h2>" + _img(_plot_readings(result)))
    anchor = ref.anchor.describe() if ref.anchor else "none: no reference SoC"
    parts.append(
        f"<h2>State of charge</h2><p>Reference anchored on {_e(anchor)}.</p>" + _img(_plot_soc(result))
    )
    if ref.checks:
        rows = [
            {
                "other anchor": c.anchor.describe(),
                "counted SoC %": 100 * c.counted_soc,
                "implied capacity Ah": c.implied_capacity_ah,
            }
            for c in ref.checks
        ]
        parts.append("<h3>Other anchors, as checks</h3>" + _table(pd.DataFrame(rows)))
    parts.append("<h2>Steps</h2>" + _table(_step_view(result.steps)))
    parts.append("<h2>Cycles</h2>" + _table(result.cycles))
    parts.append("<h2>Instrument agreement</h2>" + _img(_plot_agreement(result)))
    if result.fits:
        parts.append(
            "<ul>"
            + "".join(f"<li>{_e(f.suggestion(result.options.reference))}</li>" for f in result.fits)
            + "</ul>"
        )
    if not result.agreement.empty:
        parts.append("<h3>Per step</h3>" + _table(result.agreement))
    if result.eload:
        rows = [
            {
                "step": c.step,
                "from": c.start,
                "to": c.end,
                "e-load Ah": c.eload_ah,
                "reference Ah": c.reference_ah,
                "difference %": c.difference_pct,
                "counter reset": c.counter_reset,
            }
            for c in result.eload
        ]
        parts.append("<h2>E-load Ah counter against the reference</h2>" + _table(pd.DataFrame(rows)))
    return _PAGE.format(title=_e(title), body="\n".join(parts))


def write_report(result: Analysis, path: Path, png: Path | None = None) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(result), encoding="utf-8")
    if png is None:
        return [path]
    screenshot(path, png)
    return [path, png]


def screenshot(
    page: Path, png: Path, *, width: int = 1400, height: int = 4200, timeout_s: float = 120
) -> None:
    """Render ``page`` with headless Chromium into ``png``; RuntimeError saying why not."""
    binary = os.environ.get("SOCLAB_CHROMIUM") or next(
        (
            found
            for name in ("chromium", "chromium-browser", "google-chrome")
            if (found := shutil.which(name))
        ),
        None,
    )
    if binary is None:
        raise RuntimeError("no Chromium to render the PNG (apt-get install chromium, or set SOCLAB_CHROMIUM)")
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="soclab-chromium-") as profile:
        command = [
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={png.resolve()}",
            page.resolve().as_uri(),
        ]
        done = subprocess.run(command, capture_output=True, timeout=timeout_s, check=False)
    if done.returncode != 0 or not png.exists() or png.stat().st_size == 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"Chromium did not render {page} (exit {done.returncode}): {' / '.join(tail)}")


# --- plots ---------------------------------------------------------------------------------------


def _plot_readings(result: Analysis) -> bytes:
    import matplotlib.pyplot as plt

    fig, (ax_v, ax_i) = plt.subplots(2, 1, figsize=(13, 7.5), sharex=True)
    for kind in ("labjack", "mppt", "eload"):
        for ax, field in ((ax_v, "bat_v"), (ax_i, "bat_a")):
            values = result.data.values(kind, field)
            if not values.empty:
                t, y = _thin(values)
                ax.plot(t, y, lw=0.9, color=COLOURS[kind], label=f"{kind} {result.data.devices[kind]}")
    ax_v.set_ylabel("battery voltage / V")
    ax_i.set_ylabel("battery current / A (+ charges)")
    ax_i.axhline(0, color="#888", lw=0.5)
    for ax in (ax_v, ax_i):
        _steps(ax, result)
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    ax_i.set_xlabel("time (UTC)")
    return _png(fig)


def _plot_soc(result: Analysis) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(13, 4))
    trace = result.reference.trace
    if result.reference.anchor is not None:
        t, y = _thin(trace["soc_pct"])
        ax.plot(t, y, color=COLOURS["reference"], lw=1.5, label=f"reference ({result.options.reference})")
        anchor = result.reference.anchor
        ax.plot(
            [_times([anchor.t_ns])[0]],
            [100 * anchor.soc],
            "o",
            color="#ff7f0e",
            label=f"anchor ({anchor.kind})",
        )
        for check in result.reference.checks:
            ax.plot([_times([check.anchor.t_ns])[0]], [100 * check.anchor.soc], "x", color="#ff7f0e")
    mppt = result.data.values("mppt", "soc_pct")
    if not mppt.empty:
        t, y = _thin(mppt)
        ax.plot(
            t, y, color=COLOURS["mppt"], lw=1, label=f"MPPT's own soc_pct ({result.data.devices['mppt']})"
        )
    _steps(ax, result)
    ax.set_ylabel("state of charge / %")
    ax.set_xlabel("time (UTC)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _png(fig)


def _plot_agreement(result: Analysis) -> bytes:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    reference = result.options.reference
    for ax, field, unit in ((axes[0], "bat_a", "A"), (axes[1], "bat_v", "V")):
        base = result.data.values(reference, field)
        for kind in ("mppt", "eload", "labjack"):
            values = result.data.values(kind, field)
            if kind == reference or values.empty or base.empty:
                continue
            near = asof(values.index, base.rename("r"), result.options.tolerance_s)["r"].to_numpy()
            ok = np.isfinite(near)
            ax.plot(near[ok], values.to_numpy()[ok], ".", ms=2, alpha=0.4, color=COLOURS[kind], label=kind)
        for fit in (f for f in result.fits if f.quantity == field):
            x = np.linspace(*fit.reference_range, 2)
            ax.plot(x, fit.gain * x + fit.offset, color=COLOURS[fit.other], lw=1,
                    label=f"{fit.other} = {fit.gain:.4f} x {reference} {fit.offset:+.3f}")  # fmt: skip
        if not base.empty:
            ax.plot(*([[base.min(), base.max()]] * 2), color="#888", lw=0.8, ls="--", label="equal")
        ax.set_xlabel(f"{reference} {field} / {unit}")
        ax.set_ylabel(f"other instrument / {unit}")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    return _png(fig)


def _steps(ax: Axes, result: Analysis) -> None:
    shades = {"charge": "#d62728", "discharge": "#1f77b4"}
    for _, step in result.steps.iterrows():
        colour = shades.get(step["kind"])
        if colour:
            ax.axvspan(
                step["start"].tz_localize(None), step["end"].tz_localize(None), color=colour, alpha=0.06, lw=0
            )


def _thin(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    stride = max(1, len(series) // MAX_POINTS)
    part = series.iloc[::stride]
    return _times(part.index.to_numpy(dtype=np.int64)), part.to_numpy(dtype=float)


def _times(t_ns: np.ndarray | list[int]) -> np.ndarray:
    times: np.ndarray = pd.to_datetime(np.asarray(t_ns, dtype=np.int64), unit="ns").to_numpy()
    return times


def _png(fig: Figure) -> bytes:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


# --- HTML ----------------------------------------------------------------------------------------


def _img(png: bytes) -> str:
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _step_view(steps: pd.DataFrame) -> pd.DataFrame:
    view = steps.copy()
    for column in ("start", "end"):
        view[column] = view[column].dt.strftime("%m-%d %H:%M:%S")  # the year is in the page's title
    return view


def _table(frame: pd.DataFrame) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float | np.floating):
            return "" if np.isnan(value) else f"{value:.4g}"
        if isinstance(value, pd.Timestamp):
            return str(value.strftime("%Y-%m-%d %H:%M:%S"))
        return _e(str(value)) if value is not None else ""

    # Headers may wrap between words (charged ah), so that a wide table still fits the page.
    head = "".join(f"<th>{_e(str(c).replace('_', ' '))}</th>" for c in frame.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; max-width: 1320px; }}
h1 {{ font-size: 22px; margin-bottom: 4px; }}
h2 {{ font-size: 18px; margin-top: 28px; }}
h3 {{ font-size: 15px; }}
p.meta {{ color: #555; font-size: 13px; }}
div.problems {{ background: #fff4e5; border-left: 4px solid #ff9800; padding: 4px 12px; font-size: 13px; }}
img {{ max-width: 100%; }}
table {{ border-collapse: collapse; font-size: 12px; }}
th, td {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
th {{ background: #f0f0f0; }}
td {{ white-space: nowrap; }}
</style></head>
<body>
{body}
</body></html>
"""


def main(argv: list[str] | None = None) -> int:
    p = parser("soclab report", __doc__)
    p.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    p.add_argument("--png", type=Path, help="also render the page into this PNG (headless Chromium)")
    args = p.parse_args(argv)

    def body(result: Analysis, client: InfluxClient) -> int:
        try:
            written = write_report(result, args.out, args.png)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"soclab report: {exc}", file=sys.stderr)
            return 1
        for path in written:
            print(path)
        return 0 if result.complete else 1

    return run("soclab report", args, body)


if __name__ == "__main__":
    sys.exit(main())
