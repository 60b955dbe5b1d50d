"""Entry point: ``python -m workloads.command --config FILE [--check]``."""

from workloads.command.trial import check, run
from workloads.harness import main

raise SystemExit(main("command", run, check))
