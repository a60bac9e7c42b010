"""``python -m soclab.cloud.bridge``: the same as ``soclab-bridge``."""

import sys

from soclab.cloud.bridge.cli import main

sys.exit(main())
