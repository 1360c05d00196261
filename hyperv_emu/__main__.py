"""``python -m hyperv_emu`` runs the command line."""

import sys

from hyperv_emu.cli import main

sys.exit(main())
