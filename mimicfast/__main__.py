"""``python -m mimicfast`` runs the command line."""

from mimicfast.cli import main

raise SystemExit(main())
