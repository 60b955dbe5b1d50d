"""The command workload: any program, measured from outside, behind the real trial protocol.

The driver starts ``python -m workloads.command --config FILE`` with the trial's environment knobs and
CPU pinning already applied; this wrapper runs the user's program (an argv list, ``{knob}`` placeholders
filled as whole arguments, never through a shell) once per step, and reads its figure from a printed
``@autotune {...}`` line, a regular expression, or its wall time. See :mod:`workloads.command.trial`.
"""
