"""`python -m kn026`: the command line (see kn026/cli/main.py)."""

import sys

from kn026.cli.main import main

sys.exit(main())
