"""``soclab-publish --config mppt.toml``: run one instrument's publisher until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from soclab.edge.instruments import build
from soclab.edge.publisher import config as config_module
from soclab.edge.publisher.service import Publisher
from soclab.wire import logs

log = logging.getLogger("soclab.edge.publisher")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", help="TOML file; SOCLAB_* environment variables override it")
    parser.add_argument("--log-format", choices=("json", "text"), default="json")
    args = parser.parse_args(argv)
    try:
        config = config_module.load(args.config)
        if config.instrument is None:
            raise config_module.ConfigError(
                f"no [instrument] table: the {config.source.kind} driver needs one"
            )
        instrument = build(config.source.kind, config.instrument)
    except (ValueError, ImportError) as exc:  # ConfigError is a ValueError; a missing library an ImportError
        print(f"soclab-publish: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(config.log_level, args.log_format)
    publisher = Publisher(config, instrument)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: publisher.stop())
    log.info("event=starting topic=%s spool=%s", config.topic, config.spool_path)
    publisher.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
