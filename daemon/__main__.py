"""`python -m daemon`: the same entry point as the `padimd` console script."""

import sys

from daemon.cli import main

if __name__ == "__main__":
    sys.exit(main())
