from daemon.atarictl.cli import main

raise SystemExit(main())
