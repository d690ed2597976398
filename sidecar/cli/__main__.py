"""`python -m sidecar.cli ...` is the `stepguard` command."""

from sidecar.cli.main import main

raise SystemExit(main())
