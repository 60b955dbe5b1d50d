"""Entry point: ``python -m workloads.unet3d --config FILE [--check | --prepare]``."""

from workloads.harness import main
from workloads.unet3d.trial import check, run
from workloads.unet3d.weights import prepare

raise SystemExit(main("unet3d", run, check, prepare))
