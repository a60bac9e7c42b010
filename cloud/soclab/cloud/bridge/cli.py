"""``soclab-bridge --config bridge.toml``: consume MQTT into InfluxDB until SIGTERM/SIGINT.

Exit status: 0 after a clean stop, 1 if the bridge failed (a bug: the service manager restarts
it, and the broker redelivers whatever was not acknowledged), 2 for a configuration error.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from soclab.cloud.bridge import config as config_module
from soclab.cloud.bridge.service import Bridge
from soclab.wire import logs

log = logging.getLogger("soclab.cloud.bridge")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="soclab-bridge", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="TOML file; SOCLAB_BRIDGE_* environment variables override it")
    parser.add_argument("--log-format", choices=("json", "text"), default="json")
    args = parser.parse_args(argv)
    try:
        config = config_module.load(args.config)
    except config_module.ConfigError as exc:
        print(f"soclab-bridge: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(config.log_level, args.log_format)
    # Three threads hand work to each other (network, writer, sink); with Python's default 5 ms
    # switch interval a finished write can wait that long for the GIL before the next one starts.
    sys.setswitchinterval(0.001)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, frame: stop.set())
    bridge = Bridge(config).start()
    while not stop.wait(0.5):
        if bridge.wait_finished(0):
            break
    failed = bridge.failure is not None
    bridge.stop()
    return 1 if failed or bridge.failure is not None else 0


if __name__ == "__main__":
    sys.exit(main())
