"""``python -m rpcsec``: the same command line as the ``rpcsec`` script."""

import sys

from rpcsec.cli import main

sys.exit(main())
