"""``python -m auth``: fetch a client-credentials token, or list and call tools on an MCP server."""

from .client._cli import main

raise SystemExit(main())
