import sys

from soclab.cloud.lab.cli import main

sys.exit(main())
