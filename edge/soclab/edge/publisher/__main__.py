import sys

from soclab.edge.publisher.cli import main

sys.exit(main())
