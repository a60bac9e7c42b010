import sys

from soclab.tools.replay.cli import main

sys.exit(main())
