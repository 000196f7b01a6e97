from embedded_triton.cli import main

raise SystemExit(main())
