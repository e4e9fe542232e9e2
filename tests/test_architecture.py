"""The shape the code must keep: a core without shells, no import circles, modules and functions of a readable size."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("raykd", "federated")
#: The plain-PyTorch core: importable and usable without Ray, Flower or MLflow.
CORE = [
    "raykd.config",
    "raykd.data",
    "raykd.models",
    "raykd.methods",
    "raykd.engine",
    "raykd.nodes",
    "raykd.experiment",
    "raykd.teacher.protocol",
    "raykd.teacher.source",
    "raykd.teacher.inline",
    "raykd.teacher.cache",
    "raykd.transfer",
    "raykd.files",
    "raykd.references",
    "raykd.errors",
]
SHELLS = ("ray", "flwr", "mlflow")


def modules() -> dict[str, Path]:
    """Every module of the packages, by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def test_the_core_imports_no_shell() -> None:
    """Importing every core module (and every built-in method) leaves Ray, Flower and MLflow unloaded."""
    code = (
        "import sys, importlib\n"
        f"for name in {CORE!r}: importlib.import_module(name)\n"
        "from raykd.methods import METHODS\n"
        "from raykd.methods import method_class\n"
        "[method_class(name) for name in METHODS]\n"
        f"print(sorted(m for m in {SHELLS!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


#: What the shells reserve for a process; the core is handed the device they chose, so it never reads these.
RESERVATIONS = ("gpus_per_trial", "client_gpus", "use_gpu", "num_gpus")


def test_the_core_reads_no_reservation() -> None:
    """No core module outside config/ (where the keys are declared) reads a Ray reservation to choose its device."""
    known = modules()
    core = [n for n in known if any(n == c or n.startswith(c + ".") for c in CORE) and not n.startswith("raykd.config")]
    reading = [f"{n}: {key}" for n in core for key in RESERVATIONS if key in known[n].read_text()]
    assert not reading, reading


#: The one home of the cross-field rules that need no data and no cluster.
RULES = "raykd.config.rules"


def test_each_cross_field_rule_has_one_home() -> None:
    """Every refusal raised in ``raykd.config.rules`` is worded there only: no other module repeats its message."""
    known = modules()
    fragments = {
        piece.value
        for node in ast.walk(ast.parse(known[RULES].read_text()))
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
        for arg in node.exc.args
        for piece in ast.walk(arg)
        if isinstance(piece, ast.Constant) and isinstance(piece.value, str) and len(piece.value.strip()) >= 20
    }
    assert len(fragments) > 30  # the rules' messages were found
    texts = {name: path.read_text() for name, path in known.items() if name != RULES}
    repeated = [f"{name}: {text!r}" for text in sorted(fragments) for name, source in texts.items() if text in source]
    assert not repeated, repeated


def _module_imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports at module level (imports inside functions are lazy by design)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else ".".join([*name.split(".")[: -node.level], node.module])
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        found |= {t for t in targets if t in known and t != name}
    return found


def test_no_import_circles() -> None:
    known = modules()
    graph = {name: _module_imports(name, path, known) for name, path in known.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                pytest.fail("import circle: " + " -> ".join([*trail[trail.index(target) :], target]))
            if target not in state:
                visit(target, [*trail, target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_modules_and_functions_fit_on_a_screen() -> None:
    """No module over 400 lines, no function over 60."""
    too_long = []
    for name, path in modules().items():
        source = path.read_text()
        if source.count("\n") > 400:
            too_long.append(f"{name}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                too_long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not too_long, too_long


#: Tests of a behaviour that crosses modules, named for it (every other test file is named for its module).
CROSS_CUTTING = {
    "test_architecture": "the code's shape: layering, import circles, sizes, test names",
    "test_cifar_path": "a CIFAR-shaped study end to end (data, models, sweep)",
    "test_examples": "examples/: distil your own model, as the README shows it",
    "test_faults": "injected failures across the sweep, trials and retries",
    "test_hostile_input": "bad input through every command: one line, nothing written",
    "test_local_cluster": "raykd's own local Ray: loopback, capacity, cleanup",
    "test_mlflow_models": "students as MLflow models, loaded back without raykd",
    "test_pixels": "uint8 pixels through data, models, training and the server's wire",
    "test_reliability": "interruptions, resume and half-written files",
    "test_study": "the paper study's config and a CI-sized run of it",
    "test_teacher": "teacher logits in every mode (inline, server, cache) give the same students",
    "test_topk_fill": "top-k teacher logits with the min and mass fills, end to end",
    "test_two_nodes": "two Ray nodes on one machine: placement and node ids",
}


def test_a_modules_tests_are_found_by_its_name() -> None:
    """``tests/test_<module>[_<aspect>].py`` tests that module (or package) of raykd/ or federated/; a test of a
    behaviour across modules is named for it and listed in ``CROSS_CUTTING``."""
    names = {name.rsplit(".", 1)[-1] for name in modules()} - {"__init__"}
    unplaced = []
    for path in sorted((REPO / "tests").glob("test_*.py")):
        parts = path.stem.removeprefix("test_").split("_")
        named = any("_".join(parts[:n]) in names for n in range(1, len(parts) + 1))
        if not named and path.stem not in CROSS_CUTTING:
            unplaced.append(path.name)
    assert not unplaced, f"name these for their module, or list them in CROSS_CUTTING: {unplaced}"
    assert not set(CROSS_CUTTING) - {p.stem for p in (REPO / "tests").glob("test_*.py")}  # no stale entries
