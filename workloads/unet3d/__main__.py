"""Entry point: ``python -m workloads.unet3d --config FILE``."""

from workloads.harness import main
from workloads.unet3d.trial import run

raise SystemExit(main("unet3d", run))
