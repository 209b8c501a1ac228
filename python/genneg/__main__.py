"""``python -m genneg ...``: the same as the ``genneg`` command (:mod:`genneg.cli`)."""

import sys

from genneg.cli import main

sys.exit(main())
