"""`python -m medtune.cli ...` (what torchrun and accelerate launch): the same as `medtune ...`."""

import sys

from medtune.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
