"""Entry point: ``python -m workloads.command --config FILE [--check]``.

The config may name any workload: a user's own search space runs its program under its own name.
"""

from workloads.command.trial import check, run
from workloads.harness import main

raise SystemExit(main(None, run, check))
