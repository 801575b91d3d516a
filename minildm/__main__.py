"""``python -m minildm``: the command line (see :mod:`minildm.app.cli`)."""

from minildm.app.cli import main

raise SystemExit(main())
