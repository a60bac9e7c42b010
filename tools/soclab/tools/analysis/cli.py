"""What ``soclab analyse``, ``soclab export`` and ``soclab report`` share: which data, which
database, which battery; errors said in one line and turned into exit codes (2: the request or
the settings are wrong, or there is nothing to analyse; 1: it ran but could not do all it was
asked)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import Any

from soclab.tools.analysis import Analysis, AnalysisError, analyse, load, load_settings, parse_time
from soclab.tools.analysis.settings import KINDS
from soclab.tools.influx import ConfigError, InfluxClient, InfluxError, add_influx_arguments, influx_settings


def parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawTextHelpFormatter
    )
    what = p.add_argument_group("what to analyse: a run (its run_events), or a time range")
    what.add_argument("--site", required=True)
    what.add_argument("--node", required=True)
    what.add_argument("--run", help="run id (run_events tag 'run')")
    what.add_argument("--from", dest="start", help="ISO 8601 time (UTC unless it says) or epoch seconds")
    what.add_argument("--to", dest="end", help="ISO 8601 time or epoch seconds")
    what.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="KIND=NAME",
        help=f"which device of a kind ({', '.join(KINDS)}), where a node has several",
    )
    what.add_argument("--anchor", help="SoC anchor: auto, full, ocv or <soc_pct>@<time> (over [analysis])")
    add_influx_arguments(p)
    p.epilog = "The --config file may also hold [battery] and [analysis] tables (see soclab.tools.analysis)."
    return p


def run(prog: str, args: argparse.Namespace, body: Callable[[Analysis, InfluxClient], int]) -> int:
    """Load, analyse, hand over to ``body``; errors become a line on stderr and an exit code."""
    try:
        devices = dict(_pair(text) for text in args.device)
        settings = influx_settings(args)
        battery, options = load_settings(args.config)
        if args.anchor:
            options = dataclasses.replace(options, anchor=args.anchor).check()
        start = parse_time(args.start) if args.start else None
        end = parse_time(args.end) if args.end else None
    except (ConfigError, AnalysisError, ValueError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    client = InfluxClient(settings)
    try:
        data = load(client, args.site, args.node, run=args.run, start_ns=start, end_ns=end, devices=devices)
        result = analyse(data, battery, options)
    except (AnalysisError, InfluxError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    try:
        return body(result, client)
    except (AnalysisError, InfluxError, OSError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()


def _pair(text: str) -> tuple[str, Any]:
    kind, sep, name = text.partition("=")
    if not sep or kind not in KINDS or not name:
        raise ValueError(f"--device {text!r}: use KIND=NAME with KIND one of {', '.join(KINDS)}")
    return kind, name
