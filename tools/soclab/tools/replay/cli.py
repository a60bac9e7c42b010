"""``soclab replay``: publish a recorded session through the pipeline and wait until it is stored.

Reads a Grafana CSV export ("series to columns"; the MPPT's own series map by their ThingSet
names, anything else with --map or --skip), publishes it on the replay path
(soclab/<site>/<node>/<device>/replay: stored with its old time stamps, kept out of the live lag)
with a bounded number of messages in flight, shows progress, waits for the bridge's storage
confirmations (and its dead letters, for a message refused whole), and ends with the counts:
sent, stored, refused, with the bridge's reasons for what it refused. It exits 0 only if every sample
was stored; 1 if any was refused or never confirmed; 2 if it could not start; 130 when
interrupted. Sequence numbers start at --seq-start for every device: a replay run again with the
same numbers overwrites the same points, it does not double them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TextIO

from soclab.tools.connection import add_mqtt_arguments, connect, mqtt_settings
from soclab.tools.replay.columns import ColumnError, Mapping, Selector
from soclab.tools.replay.messages import batches
from soclab.tools.replay.recording import Recording, read_grafana_csv
from soclab.tools.replay.sender import MAX_WINDOW, Inbox, Pace, Sender, SendError, Stalled
from soclab.tools.replay.tally import Tally

SUBSCRIBE_TIMEOUT_S = 10.0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out, err = sys.stdout, sys.stderr
    try:
        pace = Pace(
            window=args.window,
            grace_s=args.resend_after,
            timeout_s=args.timeout,
            speed=args.speed,
            progress_every_s=args.progress_every,
        ).check()
        recording = read_grafana_csv(
            args.csv,
            maps=[Mapping.parse(m) for m in args.map],
            skips=[Selector.parse(s) for s in args.skip],
            skip_unknown=args.skip_unknown,
        )
        plan = list(
            batches(
                recording,
                args.site,
                args.node,
                samples_per_message=args.samples_per_message,
                max_span_s=args.max_span,
                seq_start=args.seq_start,
            )
        )
    except (OSError, ValueError) as exc:  # RecordingError, ColumnError, TopicError among them
        print(f"replay: {exc}", file=err)
        return 2
    _describe(recording, len(plan), err)
    if args.dry_run:
        return 0
    inbox = Inbox()
    try:
        client = connect(
            mqtt_settings(args), "replay", setup=lambda c: inbox.attach(c, args.site, args.node, pace)
        )
    except (OSError, ValueError) as exc:  # ConfigError and ConnectionError among them
        print(f"replay: {exc}", file=err)
        return 2
    started = time.monotonic()
    sender = Sender(
        client, inbox, pace, progress=lambda tally: _progress(tally, recording.total, started, err)
    )
    problem = None
    try:
        inbox.wait_subscribed(SUBSCRIBE_TIMEOUT_S)
        sender.run(plan)
    except (ConnectionError, Stalled, SendError) as exc:
        problem = str(exc)
    except KeyboardInterrupt:
        problem = "interrupted"
    finally:
        client.disable_logger()
        client.disconnect()
        client.loop_stop()
    return _report(sender, recording, time.monotonic() - started, problem, out, err)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soclab replay", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("csv", type=Path, help="Grafana CSV export, 'series to columns', times in epoch ms")
    parser.add_argument("--site", required=True)
    parser.add_argument("--node", required=True)
    columns = parser.add_argument_group("columns")
    columns.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="SERIES[@LABEL]=[KIND:]DEVICE.FIELD",
        help="replay a column as this device's field, e.g. 'Temp@mppt-1210-hus=mppt.bat_degc'",
    )
    columns.add_argument(
        "--skip", action="append", default=[], metavar="SERIES[@LABEL]", help="leave a column out"
    )
    columns.add_argument("--skip-unknown", action="store_true", help="leave out every column nothing maps")
    sending = parser.add_argument_group("sending")
    sending.add_argument("--samples-per-message", type=int, default=100)
    sending.add_argument(
        "--max-span", type=float, default=3600.0, help="recorded time one message may span, s (default 3600)"
    )
    sending.add_argument("--seq-start", type=int, default=0, help="first sequence number of every device")
    sending.add_argument(
        "--window", type=int, default=1000, help=f"messages in flight at most (1..{MAX_WINDOW}, default 1000)"
    )
    sending.add_argument(
        "--speed", type=float, default=0.0, help="0: as fast as stored (default); 1: real time"
    )
    sending.add_argument(
        "--resend-after", type=float, default=30.0, help="a lost message is sent again after this, s"
    )
    sending.add_argument(
        "--timeout", type=float, default=120.0, help="give up when nothing is confirmed for this long, s"
    )
    sending.add_argument("--progress-every", type=float, default=2.0, help="seconds between progress lines")
    sending.add_argument("--dry-run", action="store_true", help="read and check the file, send nothing")
    add_mqtt_arguments(parser)
    return parser


def _describe(recording: Recording, messages: int, err: TextIO) -> None:
    per_device = ", ".join(f"{d} {len(s):,}" for d, s in sorted(recording.samples.items()))
    print(f"replay: {recording.total:,} samples in {messages:,} messages ({per_device})", file=err)
    for column, why in recording.plan.skipped:
        print(f"replay: column {str(column)!r} left out ({why})", file=err)


def _progress(tally: Tally, total: int, started: float, err: TextIO) -> None:
    elapsed = time.monotonic() - started
    done = tally.stored + tally.refused
    rate = done / elapsed if elapsed > 0 else 0.0
    left = f", about {(total - done) / rate:.0f} s left" if rate > 0 else ""
    print(
        f"replay: {done:,}/{total:,} samples settled ({100 * done / max(total, 1):.0f} %): "
        f"{tally.stored:,} stored, {tally.refused:,} refused, {tally.in_flight:,} messages in flight, "
        f"{rate:,.0f} samples/s{left}",
        file=err,
        flush=True,
    )


def _report(
    sender: Sender, recording: Recording, elapsed: float, problem: str | None, out: TextIO, err: TextIO
) -> int:
    tally = sender.tally
    unconfirmed = tally.sent_samples - tally.stored - tally.refused
    unsent = recording.total - tally.sent_samples
    print(
        f"replay: sent {tally.sent_samples:,}, stored {tally.stored:,}, refused {tally.refused:,}, "
        f"not confirmed {unconfirmed:,}, not sent {unsent:,} (of {recording.total:,} samples; "
        f"{tally.resent_batches:,} messages sent again) in {elapsed:.1f} s",
        file=out,
        flush=True,
    )
    for reason, samples in sender.refusals.most_common(3):
        print(f"replay: the bridge refused {samples:,} samples: {reason}", file=err)
    if sender.bad_confirmations:
        print(f"replay: {sender.bad_confirmations} unreadable confirmations ignored", file=err)
    if problem:
        print(f"replay: stopped: {problem}", file=err)
        return 130 if problem == "interrupted" else 1
    if tally.stored != recording.total:
        print(f"replay: {recording.total - tally.stored:,} samples were not stored", file=err)
        return 1
    return 0


__all__ = ["ColumnError", "main"]
