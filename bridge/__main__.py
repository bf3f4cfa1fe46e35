"""`python -m bridge` runs the same command line as the `bridge` console script."""

from bridge.cli import main

raise SystemExit(main())
