import sys

from soclab.dev.lab.cli import main

sys.exit(main())
