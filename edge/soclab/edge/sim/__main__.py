import sys

from soclab.edge.sim.cli import main

sys.exit(main())
