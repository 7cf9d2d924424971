"""Allow ``python -m pgs_dali`` as another name for the ``pgs-dali`` command."""

import sys

from pgs_dali.cli import main

sys.exit(main())
