"""The `stepguard` command: one module per command group, exit codes beside them."""
