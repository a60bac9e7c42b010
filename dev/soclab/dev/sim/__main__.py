import sys

from soclab.dev.sim.cli import main

sys.exit(main())
