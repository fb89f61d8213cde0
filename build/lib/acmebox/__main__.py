from acmebox.cli import main

raise SystemExit(main())
