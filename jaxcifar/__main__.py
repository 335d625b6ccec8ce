"""`python -m jaxcifar` runs the command line."""

import sys

from jaxcifar.cli import main

sys.exit(main())
