"""``python -m tuckerflow`` runs the command line (see :mod:`tuckerflow.cli`)."""

import sys

from tuckerflow.cli import main

sys.exit(main())
