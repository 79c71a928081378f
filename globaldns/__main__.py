"""`python -m globaldns` runs the command line."""

from globaldns.cli import main

raise SystemExit(main())
