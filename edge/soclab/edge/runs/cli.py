"""``soclab-run --config /etc/soclab/run.toml``: the node's run controller, until SIGTERM/SIGINT
(which stop the active run, safely)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from soclab.edge.runs import config as config_module
from soclab.edge.runs.controller import RunController
from soclab.wire import logs

log = logging.getLogger("soclab.edge.runs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", help="TOML file; SOCLAB_* environment variables override it")
    parser.add_argument("--log-format", choices=("json", "text"), default="json")
    args = parser.parse_args(argv)
    try:
        config = config_module.load(args.config)
    except ValueError as exc:
        print(f"soclab-run: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(config.log_level, args.log_format)
    controller = RunController(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: controller.stop())
    log.info(
        "event=starting node=%s/%s journal=%s", config.source.site, config.source.node, config.journal.path
    )
    controller.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
