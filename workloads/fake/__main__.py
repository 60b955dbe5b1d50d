"""Entry point: ``python -m workloads.fake --config FILE [--check|--prepare]``."""

from workloads.fake.trial import check, prepare, run
from workloads.harness import main

raise SystemExit(main("fake", run, check, prepare))
