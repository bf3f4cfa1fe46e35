"""`python -m admin` runs the same command line as the `sessions-admin` console script."""

from admin.cli import main

raise SystemExit(main())
