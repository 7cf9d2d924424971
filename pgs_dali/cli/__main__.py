"""Allow ``python -m pgs_dali.cli``."""

import sys

from pgs_dali.cli import main

sys.exit(main())
