"""Entry point: ``python -m workloads.keras --config FILE [--check]``."""

from workloads.harness import main
from workloads.keras.trial import check, run

raise SystemExit(main("keras", run, check))
