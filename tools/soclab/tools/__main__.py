import sys

from soclab.tools.cli import main

sys.exit(main())
