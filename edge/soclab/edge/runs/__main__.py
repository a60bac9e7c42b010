import sys

from soclab.edge.runs.cli import main

sys.exit(main())
