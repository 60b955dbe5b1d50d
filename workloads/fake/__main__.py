"""Entry point: ``python -m workloads.fake --config FILE [--check]``."""

from workloads.fake.trial import check, run
from workloads.harness import main

raise SystemExit(main("fake", run, check))
