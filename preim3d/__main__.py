"""`python -m preim3d`: the same command line as the `preim3d` console script."""

from .cli import main

raise SystemExit(main())
