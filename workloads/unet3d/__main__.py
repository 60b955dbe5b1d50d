"""Entry point: ``python -m workloads.unet3d --config FILE [--check]``."""

from workloads.harness import main
from workloads.unet3d.trial import check, run

raise SystemExit(main("unet3d", run, check))
