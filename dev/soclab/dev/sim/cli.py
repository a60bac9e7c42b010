"""``soclab-sim``: the simulated lab's instruments on pseudo-terminals, until SIGTERM/SIGINT.

Prints one line per instrument, ``<name> <link>``, once all are ready, so a caller can wait
for them; the drivers open the links (e.g. ``var/lab/dev/mppt``) as they would ``/dev/ttyACM0``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from soclab.dev.data import RECORDING
from soclab.dev.sim.battery import Battery, BatteryParams
from soclab.dev.sim.lab import SimulatedLab
from soclab.dev.sim.profiles import LAB_EVENING, Profile, ReplayProfile, SupplyProfile
from soclab.dev.sim.simulator import WireSimulator
from soclab.edge.instruments import UnknownKind, kind, kinds
from soclab.wire import logs

log = logging.getLogger("soclab.dev.sim")


def _profile(spec: str, speed: float) -> Profile | None:
    if spec == "none":
        return None
    if spec == "lab-evening":
        return LAB_EVENING
    if spec.startswith("supply:"):
        return SupplyProfile(float(spec.removeprefix("supply:")))
    if spec.startswith("replay:"):
        source = spec.removeprefix("replay:")
        return ReplayProfile.from_csv(RECORDING if source == "recording" else source, speed=speed)
    raise ValueError(
        f"unknown profile {spec!r}: lab-evening, replay:recording, replay:<grafana csv>, supply:<amps>, none"
    )


def wire_kinds() -> list[str]:
    """The kinds the registry gives a wire simulator (the others are simulated behind a library)."""
    return [name for name in kinds() if kind(name).simulator]


def _simulators(
    names: list[str], battery: Battery, dev_dir: Path, args: argparse.Namespace
) -> dict[str, WireSimulator]:
    own: dict[str, dict[str, Any]] = {"mppt": {"dialect": args.mppt_dialect, "period_s": args.mppt_period}}
    sims: dict[str, WireSimulator] = {}
    for name in names:
        try:
            target = kind(name).simulator
        except UnknownKind as exc:
            raise ValueError(str(exc)) from None
        if target is None:
            raise ValueError(
                f"no wire simulator for {name!r} (simulated behind its library); wire: {wire_kinds()}"
            )
        module_name, _, class_name = target.partition(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        sims[name] = cls(battery, dev_dir / name, **own.get(name, {}))
    return sims


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--dev-dir", type=Path, default=Path("var/lab/dev"), help="where the links go")
    wire = ",".join(wire_kinds())
    parser.add_argument("--instruments", default=wire, help=f"comma-separated, of: {wire}")
    parser.add_argument("--mppt-dialect", default="v21", help="v21, v0.4 or v0.5")
    parser.add_argument("--mppt-period", type=float, default=1.0, help="seconds between publications")
    parser.add_argument(
        "--profile",
        default="lab-evening",
        help="lab-evening, replay:recording (the lab's 2021 evening), replay:<csv>, none,\n"
        "supply:<amps> (a supply for the charger, the load left to a run)",
    )
    parser.add_argument("--speed", type=float, default=1.0, help="replay speed (replay profile)")
    parser.add_argument("--soc", type=float, default=0.6, help="initial state of charge, 0..1")
    parser.add_argument(
        "--capacity-ah", type=float, default=9.0, help="the battery's capacity (small: fast runs)"
    )
    parser.add_argument("--state-file", type=Path, help="share the battery with the LabJack stand-in")
    parser.add_argument("--log-format", choices=("json", "text"), default="json")
    args = parser.parse_args(argv)
    logs.configure("INFO", args.log_format)
    try:
        battery = Battery(BatteryParams(capacity_ah=args.capacity_ah), soc=args.soc)
    except ValueError as exc:
        print(f"soclab-sim: {exc}", file=sys.stderr)
        return 2
    try:
        profile = _profile(args.profile, args.speed)
        names = [n for n in args.instruments.split(",") if n]
        sims = _simulators(names, battery, args.dev_dir, args)
    except (ValueError, OSError) as exc:
        print(f"soclab-sim: {exc}", file=sys.stderr)
        return 2
    lab = SimulatedLab(battery, profile, sims, state_file=args.state_file)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    lab.start()
    for name, sim in sims.items():
        print(name, sim.port.link, flush=True)
    print("ready", flush=True)
    done.wait()
    lab.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
