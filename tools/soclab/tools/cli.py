"""``soclab <command> ...``: the operator's command. Each command lives in its own module and is
imported only when asked for, so that a quick command never pays for a heavy library."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

# command -> (module with ``main(argv) -> int``, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "replay": ("soclab.tools.replay", "publish a recorded session (Grafana CSV) through the pipeline"),
    "analyse": (
        "soclab.tools.analysis.analyse_command",
        "reference SoC, steps, cycles, instrument agreement of a run",
    ),
    "export": ("soclab.tools.analysis.export", "a run or time range as BDF CSV and Parquet"),
    "report": ("soclab.tools.analysis.report", "a self-contained HTML (and PNG) report of a run"),
    "run": (
        "soclab.tools.runs.cli",
        "runs on a node: check, start, status, stop; cmd: one instrument command",
    ),
    "watch": ("soclab.tools.watch.cli", "live monitor: devices, bridges, alerts (--json, --status)"),
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"soclab: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    command: Callable[[list[str]], int] = module.main
    return command(rest)


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
    return "usage: soclab <command> [options]   (soclab <command> --help)\n\ncommands:\n" + "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
