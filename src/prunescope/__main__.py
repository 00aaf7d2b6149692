from prunescope.cli import main

raise SystemExit(main())
