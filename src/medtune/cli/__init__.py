"""The command line: `parser` holds every flag, `main` dispatches, one module per command."""
