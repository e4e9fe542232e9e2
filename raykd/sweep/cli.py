"""``python -m raykd.tune``: an experiment config -> node models -> Ray Tune sweep -> tables, plots, MLflow.

Exit status: 0 when every trial succeeded, 2 for bad input (one line on stderr, nothing ran),
3 when trials failed (the sweep completed and its tables were written first), 4 when the MLflow store
failed part-way (the local tables are complete; one line says what MLflow lacks), 130 on Ctrl-C.
This module imports only the config on its way to ``--help``; Ray, Tune and MLflow load when a
sweep actually starts (``raykd.api.run``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from raykd.api import Study, run
from raykd.cli import add_run_arguments, config_from_args, run_command
from raykd.config import describe_schema
from raykd.errors import ConfigError

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "tune_configs" / "default.yaml"
#: Exit status of a sweep that completed but recorded failed trials (2 is bad input).
EXIT_TRIALS_FAILED = 3
#: Exit status of a sweep whose local results are complete but whose MLflow store failed part-way.
EXIT_UNTRACKED = 4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m raykd.tune",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Search distillation knobs between pre-trained nodes with Ray Tune and record every run in MLflow.\n"
            "With no arguments it runs tune_configs/default.yaml on embedded MNIST-1D data.\n\n"
            "Output, in output_dir/<name>-<time>/: results.md, trials.csv, plots/*.png, and the distilled\n"
            "students of each row's chosen setting as students/<row>/seed<S>.pt (load them with\n"
            "raykd.load_student); students of the settings that were not chosen are deleted at the end.\n"
            "Exit status: 0 all trials succeeded, 2 bad input (nothing ran), 3 some trials failed,\n"
            "4 the MLflow store failed part-way (local results complete), 130 Ctrl-C (it says how to --resume)."
        ),
        epilog="config keys (YAML sections; any can be overridden with --set):\n"
        + describe_schema()
        + "\n\nexample:\n  python -m raykd.tune --config tune_configs/dml.yaml --set seeds=[0,1] "
        "--set partition.alpha=0.1",
    )
    add_run_arguments(parser, DEFAULT_CONFIG)
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="PATH",
        help="continue the interrupted sweep whose output folder is PATH (runs/<name>-<time>/); "
        "finished trials are kept, the others run",
    )
    return parser


def _sweep(args: argparse.Namespace) -> int:
    """The command: the Python API's ``raykd.run`` with the command line's config, and an exit status."""
    if args.resume:
        if args.config or args.overrides or args.tracking_uri:
            raise ConfigError(
                f"--resume {args.resume}: cannot be combined with --config, --set or --tracking-uri; "
                f"a resumed sweep keeps its own config ({args.resume / 'config.yaml'})"
            )
        study = run(None, resume=args.resume, address=args.address)
    else:
        study = run(config_from_args(args, DEFAULT_CONFIG))
    if study.untracked:
        print(
            f"raykd: {study.untracked}; the local results in {study.out} are complete; once MLflow answers again, "
            f"fill it in with: python -m raykd.tracking_sync {study.out}",
            file=sys.stderr,
        )
    if study.failed:
        what = "trial(s) or simulation(s)" if study.config.federated.after_sweep else "trial(s)"
        print(
            f"raykd: {study.failed} {what} failed; see 'Failed trials' in {study.out / 'results.md'}", file=sys.stderr
        )
        return EXIT_TRIALS_FAILED
    print_students(study.students)
    print_where(study)
    return EXIT_UNTRACKED if study.untracked else 0


def print_students(students: dict[str, list[Path]]) -> None:
    """Say where the product of the sweep is, and how to load it."""
    if not students:
        return
    print("distilled students (chosen setting per row; load with raykd.load_student(path)):")
    for label, paths in students.items():
        print(f"  {label}: {paths[0].parent}/ ({len(paths)} seeds)")


def print_where(study: Study) -> None:
    """The sweep's last lines: where its report is, and how to browse its runs."""
    uri = study.uri
    browse = f"open {uri}" if uri.startswith("http") else f"mlflow ui --backend-store-uri {uri}"
    print(f"report: {study.out / 'results.md'}\nMLflow runs: {browse}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see the module docstring for exit codes)."""
    args = build_parser().parse_args(argv)
    return run_command(lambda: _sweep(args))
