"""``python -m autotune`` runs the CLI."""

from autotune.cli import main

raise SystemExit(main())
