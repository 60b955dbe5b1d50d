"""The ``autotune`` command line: one small function per subcommand.

User errors print one line (``autotune: error: ...``) and exit with status 2, having changed nothing
stored; tracebacks appear only with ``--debug``. Every exit status is in :class:`autotune.exits.Exit`.
The password of a ``--storage`` URL never reaches an error line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from autotune.errors import UserError
from autotune.exits import Exit


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit status."""
    from autotune.library_notes import collected

    parser = _parser()
    args = parser.parse_args(argv)
    with collected(debug=args.debug) as notes:
        try:
            return _handle(args)
        finally:
            if notes.summary():
                # After machine-read stdout (JSON, an exported file) the note goes to stderr.
                stream = sys.stderr if getattr(args, "json", False) or args.command == "export" else sys.stdout
                print(_scrub(notes.summary(), getattr(args, "storage", None)), file=stream, flush=True)


def _handle(args: argparse.Namespace) -> int:
    try:
        return args.handler(args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"autotune: error: {_scrub(_one_line(exc), getattr(args, 'storage', None))}", file=sys.stderr)
        return getattr(exc, "exit_status", Exit.USAGE)
    except KeyboardInterrupt:
        print("autotune: interrupted", file=sys.stderr)
        return Exit.INTERRUPTED


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(Exit.USAGE, f"autotune: error: {message}\n")


USAGE_TEXT = """\
Tune a TensorFlow/Keras job for throughput on the CPU it runs on. An Optuna study tries the runtime
knobs (thread pools, oneDNN, data layout, precision, batch and patch, XLA, CPU pinning, allocator),
each configuration in a fresh process, measures it after warm-up, and reports the best against the
untuned baseline and Intel's recommended settings, with the reason it is faster."""

EPILOG_TEXT = """\
first run:
  autotune run --workload unet3d       tune the built-in 3D U-Net (about 20 minutes on 2 cores)

where results go:
  autotune.db                          the Optuna study (SQLite, in this directory); run again to resume
  reports/<study>/report.html          the report: baseline, vendor and best, and why (also report.md)
  reports/<study>/best.json            the winner; deploy it with `autotune export` or `autotune exec`

`autotune COMMAND --help` describes each command; `autotune dashboard` shows a study live."""


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="autotune", description=USAGE_TEXT, epilog=EPILOG_TEXT,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks for errors, and the libraries' own warnings")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="tune a workload with an Optuna study")
    _workload_options(run)
    run.add_argument("--mode", choices=("infer", "train"), help="shorthand for --set mode=...")
    run.add_argument("--trials", type=_positive_int, default=30, help="trials to run in this call (default 30)")
    run.add_argument("--timeout", type=_positive_float, default=1080.0,
                     help="wall-clock budget of the study in seconds; no trial starts after it (default 1080)")
    run.add_argument("--storage", help="Optuna storage URL (default: sqlite:///autotune.db here)")
    run.add_argument("--study", help="study name (default: <workload>-<mode>-<host fingerprint>)")
    run.add_argument("--sampler", choices=("tpe", "random", "grid"), default="tpe")
    run.add_argument("--seed", type=int, default=0, help="sampler seed")
    run.add_argument("--warm-start", metavar="STUDY",
                     help="start from an earlier study of this workload in the same storage: its best "
                          "configurations are measured first, its pruned and failed ones drawn less")
    run.add_argument("--report-dir", type=Path, help="report folder (default reports/<study>)")
    run.add_argument("--allow-mixed-hosts", action="store_true",
                     help="let this host add trials to a study recorded on a different host")
    run.add_argument("--confirm-top", type=_positive_int, default=3,
                     help="search candidates re-measured in the confirmation stage (default 3)")
    run.add_argument("--confirm-select-rounds", type=_non_negative_int, default=1,
                     help="rounds of the finalists alone that choose the winner; 0 lets the search choose "
                          "(default 1)")
    run.add_argument("--confirm-repeats", type=_non_negative_int, default=5,
                     help="estimation rounds of the winner, vendor config and baseline that measure the speedups; "
                          "0 skips the confirmation stage (default 5: a 93.75%% interval)")
    run.add_argument("--no-profile", dest="profile", action="store_false",
                     help="skip the op-time breakdown of the baseline and the best at the end")
    run.add_argument("--no-prune", dest="prune", action="store_false",
                     help="measure every trial in full (no pruning of clearly slower trials)")
    run.add_argument("--max-latency", type=_positive_float, metavar="SECONDS",
                     help="a configuration whose latency figure (per sample for unet3d; the slowest instance's with "
                          "several) is over this is infeasible: stored, never the winner")
    run.add_argument("--tolerance", dest="tolerances", action="append", default=[],
                     metavar="[KNOB=VALUE:]FIGURE=BOUND",
                     help="replace an output-agreement bound of the search space, e.g. dice=0.98 or "
                          "precision=mixed_bfloat16:dice=0.98 (repeatable; another bound is another study)")
    run.add_argument("--no-wait", dest="wait", action="store_false",
                     help="exit with status 75 instead of waiting while another autotune worker "
                          "measures on this host's cores")
    run.set_defaults(handler=_run)

    dashboard = sub.add_parser("dashboard", help="serve optuna-dashboard on the study storage")
    dashboard.add_argument("--storage", help="Optuna storage URL (default: sqlite:///autotune.db here)")
    dashboard.add_argument("--host", default="127.0.0.1",
                           help="address to listen on (default 127.0.0.1: this machine only)")
    dashboard.add_argument("--port", type=_port, default=8080, help="port to listen on (default 8080)")
    dashboard.set_defaults(handler=_dashboard)

    bench = sub.add_parser("bench", help="measure one configuration the way a trial does")
    _workload_options(bench)
    bench.add_argument("--from", dest="start", choices=("baseline", "vendor_recommended"),
                       default="baseline", help="configuration the --set values apply to")
    bench.add_argument("--json", action="store_true", help="print the record as JSON (last line)")
    bench.set_defaults(handler=_bench)

    report = sub.add_parser("report", help="write report.md, report.html and best.json of a study")
    report.add_argument("--study", required=True, help="study name")
    report.add_argument("--storage", help="Optuna storage URL (default: sqlite:///autotune.db here)")
    report.add_argument("--workload", help="workload name (default: the study's)")
    report.add_argument("--space", type=Path, help="search-space file (default search_spaces/<workload>.toml)")
    report.add_argument("--report-dir", type=Path, help="report folder (default reports/<study>)")
    report.set_defaults(handler=_report)

    verify = sub.add_parser("verify", help="re-measure a study's winner and say whether its speedup still holds")
    verify.add_argument("--study", required=True, help="study name")
    verify.add_argument("--storage", help="Optuna storage URL (default: sqlite:///autotune.db here)")
    verify.add_argument("--workload", help="workload name (default: the study's)")
    verify.add_argument("--space", type=Path, help="search-space file (default search_spaces/<workload>.toml)")
    verify.add_argument("--repeats", type=_positive_int, default=5,
                        help="interleaved rounds (default 5: a 93.75%% interval)")
    verify.add_argument("--data-dir", type=Path, help="BraTS folder (default: synthetic data in the cache)")
    verify.add_argument("--trial-timeout", type=_positive_float, default=600.0,
                        help="seconds one trial may take (default 600)")
    verify.add_argument("--memory-cap", type=_positive_float, help="MiB one trial may use (default 75%% of the host)")
    verify.add_argument("--allow-mixed-hosts", action="store_true",
                        help="verify on a host whose fingerprint differs from the study's")
    verify.set_defaults(handler=_verify)

    host = sub.add_parser("host", help="describe this host")
    host.add_argument("--json", action="store_true", help="print JSON")
    host.add_argument("--calibrate", action="store_true",
                      help="measure the float32 GEMM peak (stored per host fingerprint)")
    host.set_defaults(handler=_host)

    export = sub.add_parser("export", help="write a tuned configuration for deployment")
    export.add_argument("--study", help="study name: reads the study from --storage")
    export.add_argument("--format", required=True,
                        choices=("sh", "dotenv", "json", "docker", "k8s"))
    export.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    export.add_argument("--config", dest="role",
                        choices=("best", "baseline", "vendor", "vendor_recommended"),
                        help="which configuration (default best)")
    export.add_argument("--best-json", type=Path, help="a best.json to read instead of the storage")
    export.add_argument("--report-dir", type=Path, help="a report folder whose best.json to read instead")
    export.add_argument("--storage", help="Optuna storage URL (default: sqlite:///autotune.db here)")
    export.set_defaults(handler=_export)

    launch = sub.add_parser(
        "exec", help="run a command with a tuned configuration applied",
        description="Run CMD with the configuration's environment, CPU affinity and allocator "
        "(LD_PRELOAD) applied. CMD replaces autotune, so its exit status and signals pass "
        "through. In-process knobs are in the AUTOTUNE_PARAMS variable as JSON. A configuration of N "
        "instances starts N pinned copies (AUTOTUNE_INSTANCE=0..N-1, AUTOTUNE_INSTANCES=N), forwards "
        "signals to all, waits for all and exits with the first non-zero status, or 0.",
    )
    source = launch.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="a best.json, or a record from export --format json")
    source.add_argument("--study", help="a study name: its winner is read from --storage")
    launch.add_argument("--storage", help="Optuna storage URL with --study (default: sqlite:///autotune.db here)")
    launch.add_argument("--role", choices=("best", "baseline", "vendor", "vendor_recommended"),
                        help="which configuration (default best)")
    launch.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    launch.set_defaults(handler=_exec)

    scale = sub.add_parser("scale", help="measure the scaling curve of a study's best configuration",
                           description="Measure the stored best configuration on 1, 2, 4, ... physical cores up "
                           "to the host's, as one instance and as instances of one core each; the points are "
                           "stored in the study and the report draws them. One measurement per point.")
    scale.add_argument("--study", required=True, help="study name")
    scale.add_argument("--storage", help="Optuna storage URL (default: sqlite:///autotune.db here)")
    scale.add_argument("--workload", help="workload name (default: the study's)")
    scale.add_argument("--space", type=Path, help="search-space file (default search_spaces/<workload>.toml)")
    scale.add_argument("--data-dir", type=Path, help="BraTS folder (default: synthetic data in the cache)")
    scale.add_argument("--trial-timeout", type=_positive_float, default=600.0,
                       help="seconds one point may take (default 600)")
    scale.add_argument("--memory-cap", type=_positive_float, help="MiB one point may use (default 75%% of the host)")
    scale.add_argument("--report-dir", type=Path, help="report folder to rewrite (default reports/<study>)")
    scale.set_defaults(handler=_scale)

    from autotune.profile import PROFILE_STEPS

    profile = sub.add_parser("profile", help="op-time breakdown of a study's baseline, best or vendor")
    profile.add_argument("--study", required=True, help="study name")
    profile.add_argument("--config", dest="which", required=True,
                         choices=("baseline", "best", "vendor"), help="which configuration to profile")
    profile.add_argument("--storage", help="Optuna storage URL (default: sqlite:///autotune.db here)")
    profile.add_argument("--workload", help="workload name (default: the study's)")
    profile.add_argument("--space", type=Path,
                         help="search-space file (default search_spaces/<workload>.toml)")
    profile.add_argument("--steps", type=_positive_int, default=PROFILE_STEPS,
                         help=f"timed steps recorded under the profiler (default {PROFILE_STEPS})")
    profile.add_argument("--data-dir", type=Path,
                         help="BraTS folder (default: synthetic data in the cache)")
    profile.add_argument("--trial-timeout", type=_positive_float, default=600.0,
                         help="seconds the profiling run may take (default 600)")
    profile.add_argument("--memory-cap", type=_positive_float,
                         help="MiB it may use (default 75%% of the host)")
    profile.add_argument("--report-dir", type=Path,
                         help="where profile-<config>.json goes (default reports/<study>)")
    profile.set_defaults(handler=_profile)
    return parser


def _workload_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", default="unet3d", help="workload name (default unet3d)")
    parser.add_argument("--space", type=Path, help="search-space file (default search_spaces/<workload>.toml)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KNOB=VALUE",
                        help="pin a knob (repeatable)")
    parser.add_argument("--data-dir", type=Path, help="BraTS folder (default: synthetic data in the cache)")
    parser.add_argument("--trial-timeout", type=_positive_float, default=600.0,
                        help="seconds one trial may take, start-up included (default 600)")
    parser.add_argument("--trial-seconds", type=float, metavar="SECONDS",
                        help="calibrate each trial's timed steps to last about this long "
                             "(shorthand for --set trial_seconds=...)")
    parser.add_argument("--memory-cap", type=_positive_float,
                        help="MiB of resident memory one trial may use (default 75%% of the host)")
    parser.add_argument("program", nargs=argparse.REMAINDER, metavar="-- PROGRAM [ARGS...]",
                        help="the program a command workload runs (--workload command -- python predict.py)")


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


def _scrub(message: str, storage: str | None) -> str:
    """``message`` without the password of the ``--storage`` URL, whatever library quoted it.

    A password holding an unquoted ``@`` is split there by URL parsers, so its pieces go too.
    """
    from urllib.parse import unquote

    from autotune.study import password_of

    password = password_of(storage) if storage else None
    if not password:
        return message
    pieces = {password, unquote(password), *(p for p in password.split("@") if len(p) >= 3)}
    for piece in sorted(pieces, key=len, reverse=True):
        message = message.replace(piece, "***")
    return message


def _integer(text: str, lowest: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(f"{text} {what}")
    return value


def _positive_int(text: str) -> int:
    return _integer(text, 1, "is not a positive integer")


def _non_negative_int(text: str) -> int:
    return _integer(text, 0, "is negative")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port number (0-65535)")
    return value


def _space_path(args: argparse.Namespace, study: Any = None) -> Path:
    """``--space``; else, for a stored study, the space file it was run with if still there; else the bundled one."""
    from autotune.space import bundled_space

    if args.space is not None:
        return args.space
    if study is not None:
        stored = study.user_attrs.get("space_path")
        if stored and Path(stored).is_file() and args.workload == study.user_attrs.get("workload"):
            return Path(stored)
    return bundled_space(args.workload)


def _study_space(args: argparse.Namespace, study: Any, host: Any) -> Any:
    """The search space a stored study was run with, for this host (with the program a command study ran)."""
    from autotune.space import HostFacts, load_space

    space = load_space(_space_path(args, study), HostFacts.of(host))
    command = study.user_attrs.get("command")
    if command and space.contract is not None and space.contract.is_command:
        space = space.with_command(command)
    return space


def _data_dir(args: argparse.Namespace) -> str | None:
    if args.data_dir is None:
        return None
    if not args.data_dir.is_dir():
        raise UserError(f"--data-dir {args.data_dir}: not a directory")
    return str(args.data_dir.resolve())


def _setup(args: argparse.Namespace, *, software: bool) -> tuple[Any, Any, dict[str, Any]]:
    from autotune.host import probe_host
    from autotune.space import HostFacts, load_space

    host = probe_host(software=software)
    space = load_space(_space_path(args), HostFacts.of(host))
    program = list(args.program)
    if program and program[0] == "--":
        program = program[1:]
    elif program:
        raise UserError(f"unrecognized arguments: {' '.join(program)} (a program goes after --)")
    if program:
        space = space.with_command(program)
    sets = list(args.sets)
    if getattr(args, "mode", None):
        sets.append(f"mode={args.mode}")
    if args.trial_seconds is not None:
        sets.append(f"trial_seconds={args.trial_seconds}")
    return host, space, space.parse_assignments(sets)


def _bench(args: argparse.Namespace) -> int:
    from autotune.console import console, print_bench
    from autotune.protocol import Outcome
    from autotune.record import trial_record

    host, space, pins = _setup(args, software=False)
    config = space.reference(args.start, pins)
    measurer = _measurer(args, space, host)
    spec, outcome = measurer.measure(config, "bench", on_busy=lambda holder: console.print(
        f"waiting for the cores: another autotune worker is measuring ({holder})"))
    record = trial_record(config, spec, outcome, host)
    if args.json:
        print(json.dumps(record, sort_keys=True))
    else:
        print_bench(record, space.units)
    if outcome.outcome is Outcome.OK:
        return 0
    print(f"autotune: trial {outcome.outcome.value}: {_one_line(outcome.reason)}", file=sys.stderr)
    return Exit.USAGE if outcome.outcome is Outcome.BAD_INPUT else Exit.FAILED


def _measurer(args: argparse.Namespace, space: Any, host: Any) -> Any:
    """The measuring object of a command, from its workload options."""
    from autotune.measurer import Measurer

    return Measurer(space, host, data_dir=_data_dir(args), timeout_s=args.trial_timeout,
                    memory_cap_mb=args.memory_cap, wait=getattr(args, "wait", True))


def _host(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from autotune.calibrate import calibrate, load_calibration
    from autotune.console import print_host
    from autotune.host import probe_host

    host = probe_host()
    calibration = calibrate(host) if args.calibrate else load_calibration(host)
    if args.json:
        print(json.dumps({**host.to_dict(), "fingerprint": host.fingerprint,
                          "gemm": asdict(calibration) if calibration else None}, sort_keys=True))
    else:
        print_host(host, calibration)
    return 0


def _run(args: argparse.Namespace) -> int:
    from autotune.host import probe_host
    from autotune.study import RunOptions, run_study

    # Check what the user gave first: the software probe (a TensorFlow import in a subprocess) takes
    # seconds, and neither the space nor the workload's own check depends on it.
    quick_host, space, pins = _setup(args, software=False)
    if args.max_latency is not None and (space.contract is None or space.contract.latency is None):
        raise UserError(f"--max-latency: workload {space.workload!r} declares no latency figure "
                        "(latency = \"FIGURE\" in its [workload] table)")
    if args.tolerances:
        if space.agreement is None:
            raise UserError(f"--tolerance: the {space.workload} workload declares no output-agreement check")
        space = dataclasses.replace(space, agreement=space.agreement.with_overrides(args.tolerances, space.knobs))
    data_dir = _data_dir(args)
    _check_inputs(args, space, pins, quick_host, data_dir)
    prepared = _prepare_checks(args, space, pins, quick_host, data_dir)
    host = probe_host(software=True)
    options = RunOptions(
        trials=args.trials,
        timeout_s=args.timeout,
        storage=args.storage,
        study_name=args.study,
        sampler=args.sampler,
        seed=args.seed,
        data_dir=data_dir,
        report_dir=args.report_dir,
        trial_timeout_s=args.trial_timeout,
        memory_cap_mb=args.memory_cap,
        allow_mixed_hosts=args.allow_mixed_hosts,
        prune=args.prune,
        confirm_top=args.confirm_top,
        confirm_repeats=args.confirm_repeats,
        confirm_select_rounds=args.confirm_select_rounds,
        full_report=True,
        profile=args.profile,
        wait_for_cores=args.wait,
        max_latency_s=args.max_latency,
        warm_start=args.warm_start,
    )
    return run_study(options, host, space, pins, prepared=prepared)


def _prepare_checks(
    args: argparse.Namespace, space: Any, pins: dict[str, Any], host: Any, data_dir: str | None
) -> dict[str, Any]:
    """Make the output checks' weights before any trial (trained once per host and recipe, then cached)."""
    from autotune.console import console
    from autotune.launch import default_memory_cap_mb
    from autotune.preflight import prepare_checks, reference_configs

    if space.agreement is None or space.agreement.reference is None:
        return {}
    with console.status(f"preparing the {space.workload} workload's output checks (check weights)..."):
        prepared = dict(prepare_checks(space, reference_configs(space, pins)[0], host, data_dir=data_dir,
                                       memory_cap_mb=args.memory_cap or default_memory_cap_mb(host)))
    weights = prepared.get("weights") or {}
    if prepared.get("trained"):
        console.print(f"check weights: {weights.get('label', 'trained')}: trained in "
                      f"{float(prepared.get('seconds') or 0):.0f} s (once; cached for later runs)")
    elif weights:
        console.print(f"check weights: {weights.get('label', weights.get('kind'))}")
    return prepared


def _check_inputs(args: argparse.Namespace, space: Any, pins: dict[str, Any], host: Any, data_dir: str | None) -> None:
    """The workload's check of the pinned values and its inputs, before any trial is stored (exit 2 if bad)."""
    from autotune.console import console
    from autotune.launch import default_memory_cap_mb
    from autotune.preflight import check_inputs, reference_configs

    with console.status(f"checking the {space.workload} workload's input..."):
        found = check_inputs(space, reference_configs(space, pins), host, data_dir=data_dir,
                             memory_cap_mb=args.memory_cap or default_memory_cap_mb(host))
    data = next((f["data"] for f in found if isinstance(f.get("data"), dict)), None)
    if data:
        console.print(f"input checked: {data.get('cases')} cases in {data.get('folder')} "
                      f"({data.get('read')} read, {data.get('cached')} unchanged since the last check; "
                      f"{data.get('seconds', 0):.1f} s)")


def _dashboard(args: argparse.Namespace) -> int:
    from autotune.dashboard import serve

    return serve(args.storage, host=args.host, port=args.port)


def _export(args: argparse.Namespace) -> int:
    from autotune.export import render, write_file

    record = _launch_record(args, f"autotune export --study NAME --format {args.format}")
    text = render(record, args.format)
    if args.output is None or str(args.output) == "-":
        sys.stdout.write(text)
    else:
        write_file(args.output, text)
        print(f"wrote {args.output}")
    return 0


def _launch_record(args: argparse.Namespace, usage: str) -> Any:
    """The configuration ``export`` or ``exec`` deploys: from a file given, else from the study storage.

    The storage is the source of truth: ``--study NAME`` (with ``--storage``) needs no file. A
    best.json (``--best-json``, ``--report-dir``, exec's ``--config``) is read when one is named.
    """
    from autotune.export import load_record, record_from_best
    from autotune.study import load_existing_study
    from autotune.summary import study_document

    path = getattr(args, "best_json", None) or getattr(args, "config", None)
    if path is None and getattr(args, "report_dir", None) is not None:
        path = args.report_dir / "best.json"
    if path is not None:
        record = load_record(path, args.role)
        if args.study is not None and record.study != args.study:
            raise UserError(f"{path}: holds study {record.study!r}, not {args.study!r}")
        return record
    if args.study is None:
        raise UserError(f"give --study NAME (or a best.json): {usage}")
    study = load_existing_study(args.storage, args.study)
    from autotune.export import resolve_role

    return record_from_best(study_document(study), resolve_role(args.role or "best"), source=f"study {args.study}")


def _exec(args: argparse.Namespace) -> int:
    from autotune.launcher import CommandError, exec_record, supervise

    if not args.argv or args.argv[0] != "--":
        raise UserError("put the command after --: autotune exec --config FILE -- CMD [ARGS...]")
    if len(args.argv) == 1:
        raise UserError("no command after --")
    record = _launch_record(args, "autotune exec --study NAME -- CMD")
    where = f"{args.config}: {record.role}" if args.config else f"study {args.study}: {record.role}"
    try:
        if record.layout is not None:
            return supervise(record, args.argv[1:], where=where)
        exec_record(record, args.argv[1:], where=where)
    except CommandError as exc:
        print(f"autotune: error: {_one_line(exc)}", file=sys.stderr)
        return exc.status


def _verify(args: argparse.Namespace) -> int:
    from autotune.console import console, format_figure
    from autotune.host import probe_host
    from autotune.intervals import percent
    from autotune.study import load_existing_study
    from autotune.verify import verify

    study = load_existing_study(args.storage, args.study)
    args.workload = args.workload or study.user_attrs.get("workload", "unet3d")
    host = probe_host(software=False)
    space = _study_space(args, study, host)
    recorded = study.user_attrs.get("host_fingerprint")
    if recorded not in (None, host.fingerprint) and not args.allow_mixed_hosts:
        raise UserError(f"study {args.study!r} was recorded on host {recorded}, this host is {host.fingerprint}; "
                        "use --allow-mixed-hosts to verify on another host")
    unit = space.objective.unit

    def on_run(run):
        figure = format_figure(run.value, unit) if run.value else run.outcome
        console.print(f"  round {run.round + 1}: {run.label}: {figure}")

    verdict = verify(study, _measurer(args, space, host), repeats=args.repeats, on_run=on_run)
    console.print(f"winner {space.objective.name}: {format_figure(verdict.rate, unit)} now, "
                  f"{format_figure(verdict.stored_rate, unit)} stored")
    if verdict.speedup and verdict.stored_speedup:
        new, old = verdict.speedup, verdict.stored_speedup
        console.print(f"speedup over baseline: {new[0]:.2f}x ({new[1]:.2f}-{new[2]:.2f}, {percent(verdict.level)} "
                      f"interval, {verdict.rounds} rounds) now, {old[0]:.2f}x ({old[1]:.2f}-{old[2]:.2f}, "
                      f"{percent(verdict.stored_level)} interval, {verdict.stored_rounds} rounds) stored")
    if verdict.holds:
        console.print("the stored result holds")
        return 0
    for reason in verdict.reasons:
        console.print(f"does not hold: {reason}")
    return Exit.FAILED


def _report(args: argparse.Namespace) -> int:
    from autotune.calibrate import load_calibration
    from autotune.console import console
    from autotune.host import probe_host
    from autotune.report import write_report
    from autotune.study import load_existing_study
    from autotune.summary import stored_host, summarize_study

    study = load_existing_study(args.storage, args.study)
    args.workload = args.workload or study.user_attrs.get("workload", "unet3d")
    host = stored_host(study) or probe_host(software=False)
    space = _study_space(args, study, host)
    report_dir = args.report_dir or Path("reports") / args.study
    write_report(summarize_study(study, space, host, load_calibration(host)), study, report_dir)
    console.print(f"wrote {report_dir / 'report.md'}, {report_dir / 'report.html'} and {report_dir / 'best.json'}")
    return 0


def _scale(args: argparse.Namespace) -> int:
    from autotune.console import console, format_figure
    from autotune.host import probe_host
    from autotune.report import write_report
    from autotune.scaling import measure_curve
    from autotune.study import load_existing_study
    from autotune.summary import stored_host, summarize_study

    study = load_existing_study(args.storage, args.study)
    args.workload = args.workload or study.user_attrs.get("workload", "unet3d")
    host = probe_host(software=False)
    space = _study_space(args, study, host)
    unit = space.objective.unit

    def on_point(point):
        shown = format_figure(point["value"], unit) if point["value"] else point["outcome"]
        console.print(f"  {point['cores']} cores, {point['layout']}: {shown}")

    curve = measure_curve(study, _measurer(args, space, host), on_point=on_point)
    report_dir = args.report_dir or Path("reports") / args.study
    write_report(summarize_study(study, space, stored_host(study) or host), study, report_dir)
    console.print(f"stored {len(curve['points'])} points in study {args.study}; wrote {report_dir / 'report.md'}")
    return 0


def _profile(args: argparse.Namespace) -> int:
    import contextlib

    from autotune import profile as op_profile
    from autotune.console import console
    from autotune.host import probe_host
    from autotune.study import load_existing_study
    from autotune.summary import load_study_config

    study = load_existing_study(args.storage, args.study)
    args.workload = args.workload or study.user_attrs.get("workload", "unet3d")
    host = probe_host(software=True)
    space = _study_space(args, study, host)
    stored = load_study_config(study, args.which, space, host)
    report_dir = args.report_dir or Path("reports") / args.study
    measurer = _measurer(args, space, host)
    with measurer.holding(f"profile {args.study}", lambda holder: console.print(
            f"waiting for the cores: {holder} is measuring")):
        console.print(f"profiling the {args.which} configuration (trial {stored.trial}), {args.steps} steps")
        try:
            breakdown = op_profile.profile_config(measurer, stored.config, steps=args.steps)
        except op_profile.ProfileFailed as exc:
            print(f"autotune: profile failed: {_one_line(exc)}", file=sys.stderr)
            return Exit.FAILED
    path = report_dir / f"profile-{args.which}.json"
    op_profile.write_profile(path, op_profile.profile_document(stored, breakdown, host))
    shown = {args.which: breakdown}
    other = {"baseline": "best", "best": "baseline"}.get(args.which)
    if other and (report_dir / f"profile-{other}.json").exists():
        with contextlib.suppress(UserError):  # the other one's earlier profile, side by side
            shown[other] = op_profile.load_profile(report_dir / f"profile-{other}.json")
    pair = [shown[k] for k in ("baseline", "best") if k in shown]
    op_profile.print_breakdowns(dict(sorted(shown.items())))
    if len(pair) == 2:
        console.print(op_profile.compare(*pair))
    console.print(f"wrote {path}")
    return 0
