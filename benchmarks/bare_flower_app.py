"""The baseline raykd's fedavg is measured against: a bare Flower 1.42 app, written as Flower's quickstart-pytorch.

    python benchmarks/bare_flower_app.py --out DIR [--rounds 10] [--epochs 2] [--cache-dir DIR] [--pull-interval 0.1]

ClientApp (@app.train / @app.evaluate) and ServerApp (@app.main, Flower's own FedAvg), ArrayRecord and
MetricRecord messages, a plain PyTorch loop (Adam, cross-entropy, a shuffled DataLoader), one global test
evaluation on the server each round. Only the data and the model come from raykd, so both sides train the
same thing: ``tune_configs/federated_kd.yaml``'s MNIST-1D partition of 4 clients (raykd's own split, indices
and all), its cnn1d, batch size and lr. Run through ``flwr.simulation.run_simulation`` with the backend raykd
uses in ``benchmarks/federated_overhead.py`` (0.5 CPU per client, 2 CPUs: 4 client actors).

Timing: the server stamps the end of each global evaluation; round r is the time from round r - 1's stamp
to round r's (round 1 from the evaluation of the start point). Between the two, Flower's ``Strategy.start``
only logs, so this is raykd's ``round_s`` (configuring training to the end of the global evaluation).
Written to ``DIR/rounds.csv`` (round, round_s, test_acc).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import torch  # noqa: E402
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

if TYPE_CHECKING:
    from raykd.config import ExperimentConfig
    from raykd.nodes import Setup

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "tune_configs" / "federated_kd.yaml"


@dataclass(frozen=True)
class Settings:
    """What the quickstart keeps in pyproject's run config (``run_simulation`` takes none)."""

    rounds: int
    epochs: int
    cache_dir: str
    out: str
    pull_interval: float = 0.1
    client_cpus: float = 0.5
    cpus: int = 2


# --- task: model, data, train, test (the quickstart's task.py) -----------------------------------------------


@cache
def experiment(cache_dir: str) -> tuple[ExperimentConfig, Setup]:
    """raykd's data and partition for the config (read once per process), and its batch size and lr."""
    from raykd.config import load_config
    from raykd.nodes import prepare

    cfg = load_config(CONFIG, [f"nodes.cache_dir={cache_dir}"])
    setup = prepare(cfg, cfg.seeds[0])
    return cfg, setup


def net(cache_dir: str) -> nn.Module:
    """The same architecture raykd's clients train (``nodes.model``: cnn1d)."""
    from raykd.models import build_model

    cfg, setup = experiment(cache_dir)
    return build_model(cfg.nodes.model, setup.dataset.input_shape, setup.dataset.num_classes)


def load_data(partition_id: int, cache_dir: str, batch_size: int) -> tuple[DataLoader, DataLoader]:
    """A client's local train and validation loaders, on raykd's indices for that partition."""
    _, setup = experiment(cache_dir)
    data, node = setup.dataset, setup.nodes[partition_id]
    train = TensorDataset(data.train_x[node.train], data.train_y[node.train])
    val = TensorDataset(data.train_x[node.val], data.train_y[node.val])
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(val, batch_size=1024)


def train_fn(model: nn.Module, loader: DataLoader, epochs: int, lr: float) -> float:
    """Plain local training, as raykd's engine does it (Adam, cross-entropy); the mean loss of the last epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    criterion = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        total = 0.0
        for x, y in loader:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item()
    return total / len(loader)


@torch.no_grad()
def test_fn(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy on ``loader``."""
    model.eval()
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
    return correct / len(loader.dataset)


# --- the apps ---------------------------------------------------------------------------------------------------


def client_app(s: Settings) -> ClientApp:
    """The quickstart's ClientApp: load the global model, train or test it on the local partition, reply."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        model = net(s.cache_dir)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        config = msg.content["config"]
        trainloader, _ = load_data(int(context.node_config["partition-id"]), s.cache_dir, int(config["batch-size"]))
        loss = train_fn(model, trainloader, int(config["local-epochs"]), float(config["lr"]))
        metrics = MetricRecord({"train_loss": loss, "num-examples": len(trainloader.dataset)})
        return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        model = net(s.cache_dir)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        _, valloader = load_data(int(context.node_config["partition-id"]), s.cache_dir, 1024)
        metrics = MetricRecord({"acc": test_fn(model, valloader), "num-examples": len(valloader.dataset)})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def server_app(s: Settings) -> ServerApp:
    """The quickstart's ServerApp: FedAvg over every client, a global test evaluation after each round."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        grid.pull_interval = s.pull_interval  # Flower's InMemoryGrid(pull_interval=0.1): how often it asks for replies
        cfg, setup = experiment(s.cache_dir)
        test = DataLoader(TensorDataset(setup.dataset.test_x, setup.dataset.test_y), batch_size=1024)
        stamps: list[float] = []
        rows: list[dict[str, float]] = []

        def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            model = net(s.cache_dir)
            model.load_state_dict(arrays.to_torch_state_dict())
            acc = test_fn(model, test)
            stamps.append(time.perf_counter())
            if server_round > 0:
                rows.append({"round": server_round, "round_s": stamps[-1] - stamps[-2], "test_acc": acc})
                print(f"bare round {server_round}: test acc {100 * acc:.1f}%", flush=True)
            return MetricRecord({"test_acc": acc})

        local = cfg.federated.local
        train_config = ConfigRecord({"lr": local.lr, "local-epochs": s.epochs, "batch-size": local.batch_size})
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_available_nodes=cfg.partition.num_nodes)
        initial = ArrayRecord(net(s.cache_dir).state_dict())
        strategy.start(grid, initial, s.rounds, train_config=train_config, evaluate_fn=global_evaluate)
        write_rounds(Path(s.out) / "rounds.csv", rows)

    return app


def write_rounds(path: Path, rows: list[dict[str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["round", "round_s", "test_acc"])
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cache-dir", default=".raykd_cache")
    parser.add_argument("--pull-interval", type=float, default=0.1, help="the grid's wait between pulls for replies")
    args = parser.parse_args(argv)
    s = Settings(args.rounds, args.epochs, args.cache_dir, args.out, args.pull_interval)
    clients = experiment(s.cache_dir)[0].partition.num_nodes
    run_simulation(
        server_app=server_app(s),
        client_app=client_app(s),
        num_supernodes=clients,
        backend_config={"client_resources": {"num_cpus": s.client_cpus}, "init_args": {"num_cpus": s.cpus}},
    )
    return 0


if __name__ == "__main__":
    # The apps' functions must reach the client actors by reference (as ``flwr run``'s "module:app" does), so
    # run them from this file imported under its name, not from ``__main__``.
    from bare_flower_app import main as run

    sys.exit(run())
