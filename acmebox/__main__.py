"""`python -m acmebox`: the same entry point as the `acmebox` script (cli.main)."""

from acmebox.cli import main

raise SystemExit(main())
