"""``python -m pagebuddy``: the ``pagebuddy`` command (see :mod:`pagebuddy.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
