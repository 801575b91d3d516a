"""``python -m minildm``: the command line (see :mod:`minildm.cli`)."""

from minildm.cli import main

raise SystemExit(main())
