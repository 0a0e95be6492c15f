from tenantd.cli import main

raise SystemExit(main())
