"""`python -m kn026`: the command line (see kn026/cli.py)."""

import sys

from kn026.cli import main

sys.exit(main())
