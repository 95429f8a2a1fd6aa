"""``python -m sync_server``: the same as the ``sync-server`` command."""

from sync_server.cli import main

raise SystemExit(main())
