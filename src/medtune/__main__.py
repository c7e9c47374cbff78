"""`python -m medtune ...`: the same command line as `medtune ...`."""

import sys

from medtune.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
