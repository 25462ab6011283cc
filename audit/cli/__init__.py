"""The ``flopgate`` command line. Each command lives in its own module under ``audit.cli``."""
