"""A simulation's records: a round table, an accuracy plot, a summary, and one MLflow run holding them all."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import nn  # noqa: E402

from federated.strategy import LISTED_CLIENTS, RoundLog  # noqa: E402
from federated.task import private_folder, setup_of  # noqa: E402
from raykd.config import ExperimentConfig  # noqa: E402
from raykd.experiment import lm_info  # noqa: E402
from raykd.files import write_atomic  # noqa: E402
from raykd.students import save_student  # noqa: E402
from raykd.tracking import log_simulation  # noqa: E402


def rounds_to_target(rounds: list[RoundLog], target: float) -> int | None:
    """The first round whose global test accuracy reaches ``target`` (0: the start already does)."""
    return next((r.round for r in rounds if r.test_acc is not None and r.test_acc >= target), None)


def spread(name: str, per_client: dict[int, float]) -> dict[str, float | None]:
    """Max (the round's critical path) and sum (the CPU work to share out) of one per-client timing."""
    values = list(per_client.values())
    return {f"{name}_max": max(values, default=None), f"{name}_sum": sum(values) if values else None}


def mean(values: dict[int, float]) -> float | None:
    return sum(values.values()) / len(values) if values else None


def table(history: dict[str, list[RoundLog]], text: bool = False) -> pd.DataFrame:
    """One row per (run: start point or compared strategy, round), accuracies in [0, 1], one column per client; a
    text's (``text``) perplexities beside them. Bytes: each way, and what a served kd teacher sent (``teacher_bytes``).

    Timing columns (seconds): the round's server-side phases, and the max and sum over clients of the
    local training time each client measured (wall and CPU).
    """
    rows = []
    for start, rounds in history.items():
        for r in rounds:
            rows.append(
                {
                    "start": start or "-",
                    "round": r.round,
                    "test_acc": r.test_acc,
                    "val_acc": r.val_acc,
                    "mean_client_acc": mean(r.client_acc),
                    **(
                        {"test_ppl": r.test_ppl, "val_ppl": r.val_ppl, "mean_client_ppl": mean(r.client_ppl)}
                        if text
                        else {}
                    ),
                    "sampled": r.sampled,
                    "evaluated": r.evaluated,
                    "succeeded": r.succeeded,
                    "failed": r.failed,
                    "diverged": r.diverged,
                    "eval_failed": r.eval_failed,
                    "skipped": r.skipped,
                    "bytes_down": r.bytes_down,
                    "bytes_up": r.bytes_up,
                    "teacher_bytes": r.teacher_bytes,
                    "train_loss": r.train_loss,
                    "round_s": r.round_s,
                    "train_phase_s": r.train_phase_s,
                    "server_eval_s": r.server_eval_s,
                    **spread("client_train_s", r.client_train_s),
                    **spread("client_train_cpu_s", r.client_train_cpu_s),
                    **{f"client{c}_acc": a for c, a in sorted(r.client_acc.items())},
                    **{f"client{c}_ppl": a for c, a in sorted(r.client_ppl.items())},
                }
            )
    return pd.DataFrame(rows)


def summary(
    cfg: ExperimentConfig, history: dict[str, list[RoundLog]], restarts: int = 0, nodes: dict[str, int] | None = None
) -> dict[str, Any]:
    """Final and target-reaching numbers per start point; consolidation's round savings over a random start;
    what was lost (``lost``, one line or None), how often Ray restarted a dead client actor, and how many client
    actors each Ray node held (``client_actor_nodes``, by node id)."""
    target = cfg.federated.target_acc
    f = cfg.federated
    out: dict[str, Any] = {"strategy": f.strategy if not f.compare else f.compare, "target_acc": target, "starts": {}}
    out["actor_restarts"], out["client_actor_nodes"] = restarts, nodes or {}
    for start, rounds in history.items():
        out["starts"][start or "-"] = {
            "start_test_acc": rounds[0].test_acc,
            "final_test_acc": rounds[-1].test_acc,
            "start_val_acc": rounds[0].val_acc,
            "final_val_acc": rounds[-1].val_acc,
            **(text_numbers(rounds) if cfg.data.task == "lm" else {}),
            "rounds_to_target": rounds_to_target(rounds, target),
            "failed_clients": sum(r.failed for r in rounds),
            "diverged_clients": sum(r.diverged for r in rounds),
            "skipped_rounds": sum(r.skipped for r in rounds),
            "total_bytes_down": sum(r.bytes_down for r in rounds),
            "total_bytes_up": sum(r.bytes_up for r in rounds),
            "total_teacher_bytes": sum(r.teacher_bytes for r in rounds),
        }
    starts = out["starts"]
    baseline = starts.get("random", {}).get("rounds_to_target")
    for name in ("average", "distilled"):
        reached = starts.get(name, {}).get("rounds_to_target")
        if baseline and reached is not None:
            starts[name]["fewer_rounds_than_random_pct"] = 100 * (baseline - reached) / baseline
    out["lost"] = lost(cfg, history)
    return out


def text_numbers(rounds: list[RoundLog]) -> dict[str, float | None]:
    """A language model's perplexities at the start and the end, on the test set and the validation split."""
    return {
        f"{when}_{split}_ppl": getattr(rounds[at], f"{split}_ppl")
        for when, at in (("start", 0), ("final", -1))
        for split in ("test", "val")
    }


def lost(cfg: ExperimentConfig, history: dict[str, list[RoundLog]]) -> str | None:
    """What did not run as configured, in one line (None: every round did): the rounds with failed clients,
    how many client updates failed (and diverged) and evaluations failed, the skipped rounds, the commonest cause."""
    rounds = [(start, r) for start, logs in history.items() for r in logs if r.errors or r.skipped]
    if not rounds:
        return None
    named = len(history) > 1  # consolidation's start points each run every round
    where = ", ".join(f"{start} {r.round}" if named else str(r.round) for start, r in rounds)
    logs = [r for _, r in rounds]
    parts = [f"{len(logs)} of {len(history) * cfg.federated.rounds} rounds did not run as configured (rounds {where})"]
    parts.append(f"{sum(r.failed for r in logs)} client updates failed")
    counts = {
        "of them diverged (non-finite loss; lower federated.local.lr)": sum(r.diverged for r in logs),
        "client evaluations failed": sum(r.eval_failed for r in logs),
        "rounds skipped (the previous global model kept)": sum(r.skipped for r in logs),
    }
    parts += [f"{n} {what}" for what, n in counts.items() if n]
    errors = [e for r in logs for e in r.errors]
    cause = max(dict.fromkeys(errors), key=errors.count) if errors else "too few successful clients"
    return f"{', '.join(parts)}; cause: {cause}"


def figure(rows: pd.DataFrame, cfg: ExperimentConfig) -> Figure:
    """Global test accuracy (a text's: perplexity) against rounds, one line per run, with the target accuracy."""
    fig, ax = plt.subplots(figsize=(6, 4))
    text = "test_ppl" in rows
    for start, part in rows.groupby("start", sort=False):
        name = str(start) if cfg.federated.compare else f"{cfg.federated.strategy} {start}".strip(" -")
        ax.plot(part["round"], part["test_ppl"] if text else 100 * part["test_acc"], marker="o", label=name)
    if text:
        ax.set(ylabel="global test perplexity (logit-exchange: clients' mean)", yscale="log")
    else:
        ax.axhline(100 * cfg.federated.target_acc, color="grey", linestyle=":", label="target")
        ax.set(ylabel="global test accuracy (%)")
    ax.set(xlabel="round", title=f"{cfg.name}: {cfg.data.dataset}")
    ax.legend()
    fig.tight_layout()
    return fig


def _round_metrics(rows: pd.DataFrame) -> list[tuple[int, dict[str, float]]]:
    """Each round's numbers as MLflow metrics, prefixed by the start point when there are several."""
    steps = []
    for _, row in rows.iterrows():
        prefix = "" if row["start"] == "-" else f"{row['start']}."
        metrics = {f"{prefix}{k}": float(v) for k, v in row.items() if k not in ("start", "round") and pd.notna(v)}
        steps.append((int(row["round"]), metrics))
    return steps


def _summary_metrics(info: dict[str, Any]) -> dict[str, float]:
    return {
        f"{'' if start == '-' else f'{start}.'}{k}": float(v)
        for start, numbers in info["starts"].items()
        for k, v in numbers.items()
        if v is not None
    }


def save_models(
    cfg: ExperimentConfig, out: Path, finals: dict[str, nn.Module], info: dict[str, Any]
) -> dict[str, Path]:
    """The final global model of each run as a student file (``raykd.load_student``), and the private models (fml,
    logit-exchange) that the clients left in ``output_dir``, moved beside them; returns the global models by name."""
    setup = setup_of(cfg)
    saved = {}
    for start, model in finals.items():
        name = f"global_model-{start}" if start else "global_model"
        numbers = info["starts"][start or "-"]
        saved[name] = save_student(
            out / f"{name}.pt",
            model,
            cfg.nodes.model,
            setup.dataset,
            strategy=start if cfg.federated.compare else cfg.federated.strategy,
            start=start or "-",
            seed=cfg.seeds[0],
            metrics={
                k.removeprefix("final_"): v for k, v in numbers.items() if k.startswith(("final_test", "final_val"))
            },
            **lm_info(setup.dataset),
        )
    private = private_folder(cfg)
    if private.is_dir():
        out.mkdir(parents=True, exist_ok=True)  # logit-exchange saves no global model first
        private.replace(out / "private_models")
        if not any(private.parent.iterdir()):
            private.parent.rmdir()
    return saved


def record(
    cfg: ExperimentConfig,
    uri: str,
    history: dict[str, list[RoundLog]],
    finals: dict[str, nn.Module],
    restarts: int = 0,
    nodes: dict[str, int] | None = None,
    out: Path | None = None,
) -> Path:
    """Write rounds.csv, summary.json, accuracy.png and the final models in ``out`` (default: a new folder in
    ``output_dir``); log them as one MLflow run in the store at ``uri`` (the Plan's; the global model as an MLflow
    PyTorch model). ``restarts`` and ``nodes``: see ``summary``."""
    run_name = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = out or Path(cfg.output_dir) / run_name
    rows, info = table(history, cfg.data.task == "lm"), summary(cfg, history, restarts, nodes)
    models = save_models(cfg, out, finals, info)
    write_atomic(out / "rounds.csv", rows.to_csv(index=False))
    write_atomic(out / "summary.json", json.dumps(info, indent=2))
    fig = figure(rows, cfg)
    write_atomic(out / "accuracy.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    nested = {"mlflow.parentRunId": cfg.tracking.parent_run_id} if cfg.tracking.parent_run_id else {}
    log_simulation(
        uri,
        cfg.tracking.experiment,
        run_name,
        cfg.model_dump(mode="json"),
        {"raykd.federated": cfg.federated.strategy, **nested},
        _round_metrics(rows),
        _summary_metrics(info),
        fig,
        [out / "rounds.csv", out / "summary.json"],
        models,
    )
    plt.close(fig)
    print(f"\n{printed(rows)}\n\nrecords in {out}", flush=True)
    return out


def printed(rows: pd.DataFrame) -> str:
    """The round table as printed at the end: without timings and training loss, and with per-client columns
    only for a few clients (rounds.csv keeps every column)."""
    timings = [c for c in rows.columns if c.endswith(("_s", "_s_max", "_s_sum"))]
    clients = [c for c in rows.columns if c.startswith("client") and c.endswith("_acc")]
    hidden = ["train_loss", *timings, *(clients if len(clients) > LISTED_CLIENTS else [])]
    return rows.drop(columns=hidden).to_string(index=False)
