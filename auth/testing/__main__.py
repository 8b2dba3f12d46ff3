"""``python -m auth.testing``: the local issuer (same as ``btp-mcp-issuer``)."""

import sys

from ._cli import main

sys.exit(main())
