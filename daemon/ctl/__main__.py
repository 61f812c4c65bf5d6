from daemon.ctl.cli import main

raise SystemExit(main())
