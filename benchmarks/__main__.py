"""``python -m benchmarks`` (``make bench``): the suite; ``--quick`` for CI."""

import sys

from .suite import main

sys.exit(main())
