"""``python -m federated.simulate``: an experiment config -> one Flower simulation on Ray -> round table, plot, MLflow.

This process is the simulation's Ray driver: it starts a local Ray instance on loopback or joins an
existing cluster (``ray.address`` / ``--address`` / RAY_ADDRESS), and Flower's ``ray.shutdown()`` at
the end then only stops what this process started (or disconnects it from the cluster). Embedding
a simulation in another Ray driver (a test session, a Tune trial) would shut that driver's Ray down,
so callers start this module as a child process instead.

Exit status: 0 when every round ran as configured; 2 bad input (one line, nothing ran); 3 the simulation
finished and wrote its records, but some rounds lost client updates or evaluations (a client failed, diverged
or its actor died past its retry) or were skipped, said in one line; 4 it ended without records.
A client actor that dies is restarted by Ray and its in-flight work retried once, so one lost process costs
nothing; Flower's per-failure tracebacks are left out (each round's failures are one warning line).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

import federated  # noqa: F401  (sets Flower's environment before flwr is imported)
from raykd.cli import (
    EXIT_INTERRUPTED,
    EXIT_NO_RECORDS,
    EXIT_ROUNDS_LOST,
    add_run_arguments,
    config_from_args,
    run_command,
)
from raykd.compat import FlowerClientTracebacks
from raykd.config import describe_schema
from raykd.files import last_line

if TYPE_CHECKING:
    from raykd.preflight import Plan

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "tune_configs" / "federated_kd.yaml"
#: Flower's own log lines (INFO and up, no colour codes), in the simulation's records folder; raykd prints its own.
FLOWER_LOG = "flower.log"
#: A terminal's colour codes, which Flower's messages may carry.
ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: Retries of a client's work on its restarted actor when the actor died mid-task (Ray restarts it every time).
CLIENT_TASK_RETRIES = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m federated.simulate",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a federated simulation (Flower on Ray) of raykd's partitions, models and KD methods.\n"
        "Exit status: 0 every round ran as configured, 2 bad input (nothing ran), 3 finished but some rounds lost\n"
        "client updates or were skipped (one line says which and why; records written), 4 ended without records.",
        epilog="config keys (the federated.* section drives the simulation; clients = partition.num_nodes):\n"
        + describe_schema()
        + "\n\nexample:\n  python -m federated.simulate --config tune_configs/federated_kd.yaml \\\n"
        "    --set federated.strategy=fml --set federated.rounds=3",
    )
    add_run_arguments(parser, DEFAULT_CONFIG)
    parser.add_argument("--verbose", action="store_true", help=f"also print Flower's own log lines ({FLOWER_LOG})")
    parser.add_argument(
        "--out", type=Path, metavar="PATH", help="write the records in this folder (default: output_dir/<name>-<time>)"
    )
    return parser


def simulate(plan: Plan, teacher: str | None = None, out: Path | None = None) -> Path | str:
    """Run the planned simulation in this (driver) process; the records' folder (``out``, else a new one in
    ``output_dir``), or why there are none. ``teacher``: the name of the TeacherServer actor started for it
    (``task.serve_teacher``), if any.

    Flower shuts Ray down when it ends. Client actors are restarted by Ray when they die (Flower would put a
    dead actor back in its pool and fail every later message sent to it), their in-flight work retried.
    """
    # Flower's simulation engine and the apps (torch, flwr) load only when a simulation runs.
    from flwr.simulation import run_simulation

    from federated import client_app, polling, server_app

    cfg = plan.config
    f, records = cfg.federated, list[Path]()
    one_line_client_failures()
    polling.install(f.poll_interval)  # the engine's hand-out costs the messages in flight, not the federation's size
    actor = {"max_restarts": -1, "max_task_retries": CLIENT_TASK_RETRIES}
    try:
        run_simulation(
            server_app=server_app.build(plan, records.append, teacher, out),
            client_app=client_app.build(cfg),
            num_supernodes=cfg.partition.num_nodes,
            backend_config={"client_resources": {"num_cpus": f.client_cpus, "num_gpus": f.client_gpus, **actor}},
        )
    except RuntimeError as err:  # Flower's own end ("An error was encountered"), or a ServerApp that diverged
        return last_line(str(err.__cause__ or err))
    return records[0] if records else "its ServerApp returned without writing them"


def one_line_client_failures() -> None:
    """Flower's logger without per-client tracebacks, and printed once (not again through the root logger)."""
    flower = logging.getLogger("flwr")
    flower.propagate = False
    if not any(isinstance(f, FlowerClientTracebacks) for f in flower.filters):
        flower.addFilter(FlowerClientTracebacks())


class _PlainText(logging.Formatter):
    """Flower's records as plain text for a file: level, time and message, colour codes removed."""

    def format(self, record: logging.LogRecord) -> str:
        return ANSI.sub("", super().format(record))


@contextmanager
def flower_log(folder: Path, verbose: bool) -> Iterator[Path]:
    """Flower's log lines go to a file in ``folder`` while the block runs (and to the console only when
    ``verbose``): they were nine lines in ten of a simulation's output. Yields the file's path."""
    flower = logging.getLogger("flwr")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"flower-{os.getpid()}.log"  # moved into the records folder once they exist
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(_PlainText("%(levelname)s %(asctime)s %(message)s"))
    console = [] if verbose else list(flower.handlers)
    for h in console:
        flower.removeHandler(h)
    flower.addHandler(handler)
    try:
        yield path
    finally:
        flower.removeHandler(handler)
        handler.close()
        for h in console:
            flower.addHandler(h)


def keep_log(log: Path, out: Path | str) -> Path:
    """Move Flower's log into the records folder ``out``; without records (``out`` says why) it stays where it is."""
    if isinstance(out, str):
        return log
    return log.replace(out / FLOWER_LOG)


class _NoColour:
    """A redirected stream without colour codes (Ray colours the lines it forwards from its workers and raylets,
    whatever the stream is); everything else is the wrapped stream's."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(ANSI.sub("", text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextmanager
def plain_when_redirected() -> Iterator[None]:
    """stdout and stderr without colour codes, while the block runs, where they go to a file or a pipe."""
    before = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (s if s.isatty() else _NoColour(s) for s in before)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = before


def outcome(out: Path | str) -> int:
    """The exit status of a finished simulation, and its one line on stderr when it is not 0."""
    if isinstance(out, str):
        print(f"raykd: error: the simulation ended without records: {out}", file=sys.stderr)
        return EXIT_NO_RECORDS
    info = json.loads((out / "summary.json").read_text())
    if info["actor_restarts"]:
        print(
            f"raykd: {info['actor_restarts']} client actor restart(s): Ray replaced the dead actor(s) and retried "
            "their work",
            file=sys.stderr,
        )
    if info["lost"]:
        print(f"raykd: {info['lost']}; records in {out}", file=sys.stderr)
        return EXIT_ROUNDS_LOST
    return 0


def _simulate(args: argparse.Namespace) -> int:
    import ray  # after parsing: --help never pays for Ray

    from federated.task import serve_teacher
    from raykd.cluster import Capacity, check_flower_pool, connect_ray, simulation_teacher_cpus
    from raykd.files import held_writes
    from raykd.preflight import preflight  # the core and MLflow load here, after parsing: --help never pays for them

    cfg = config_from_args(args, DEFAULT_CONFIG)
    with held_writes():  # the dataset cache lands only once the store answers and the cluster holds the pool
        plan = preflight(cfg, simulation=True)
        if ray.is_initialized():
            raise RuntimeError("federated.simulate must be its own Ray driver (Flower shuts Ray down at the end)")
        connect_ray(cfg, log_to_driver=True)
        check_flower_pool(cfg, Capacity.now(), beside=simulation_teacher_cpus(cfg))
    served = serve_teacher(cfg)  # (name, handle): the handle held while the simulation runs
    print(f"simulation: {cfg.federated.strategy}, {cfg.partition.num_nodes} clients, {cfg.federated.rounds} rounds")
    with flower_log(cfg.output_dir, args.verbose) as log:
        out = simulate(plan, served[0] if served else None, args.out and args.out.resolve())
    print(f"Flower's log: {keep_log(log, out)}", flush=True)
    return outcome(out)


def _stop_on_ctrl_c(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C: Flower's threads would log every client call it cuts off as a traceback; quiet them, then stop."""
    logging.getLogger("flwr").disabled = True
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (exit codes: see the module docstring); Ctrl-C is one line and 130."""
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGINT, _stop_on_ctrl_c)
    try:
        with plain_when_redirected():
            code = run_command(lambda: _simulate(args))
    finally:
        signal.signal(signal.SIGINT, previous)
    if code == EXIT_INTERRUPTED:  # Flower's ServerApp thread is no daemon and never ends once cut off: exit now
        import ray

        ray.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
