"""Entry point: ``python -m workloads.fake --config FILE``."""

from workloads.fake.trial import run
from workloads.harness import main

raise SystemExit(main("fake", run))
