"""``python -m vlpi``: the same as the ``vlpi`` command."""

import sys

from vlpi.cli import main

sys.exit(main())
