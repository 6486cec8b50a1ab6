"""``python -m gateway`` runs the casgate command."""

import sys

from .cli import main

sys.exit(main())
