"""``python -m p2pchunks``: the same as the ``p2pchunks`` command."""

import sys

from .cli.main import main

sys.exit(main())
