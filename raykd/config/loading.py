"""Reading configs: YAML files with ``extends``, ``--set key=value`` overrides, study cells, and the one-line
errors and ``--help`` text made from the schema."""

from __future__ import annotations

import copy
import itertools
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from raykd.config.base import Section
from raykd.config.schema import CELL_SECTIONS, ExperimentConfig, ModelSpec
from raykd.errors import ConfigError
from raykd.methods import METHODS
from raykd.methods.schema import KNOB_FORMS, METHOD_KNOBS, is_method_tag, method_config_of

#: The configs shipped in a source checkout (absent from an installed wheel: no hint then).
SHIPPED_CONFIGS = Path(__file__).resolve().parents[2] / "tune_configs"
#: The widest line of the config reference in ``--help`` (a terminal's 120 columns).
HELP_WIDTH = 120


@dataclass(frozen=True)
class Cell:
    """One combination of the study's axes: the variant chosen on each axis, and the config it runs."""

    variants: dict[str, str]
    config: ExperimentConfig

    @property
    def key(self) -> str:
        return cell_key(self.variants)


def cell_key(variants: dict[str, str]) -> str:
    """A cell's name, ``axis=variant,...`` ("" for a study without axes)."""
    return ",".join(f"{axis}={variant}" for axis, variant in variants.items())


def study_cells(cfg: ExperimentConfig) -> list[Cell]:
    """Every combination of ``axes`` variants as its own validated config; without axes, the config itself.

    Each problem is one ConfigError line naming the axis, the variant (or the cell) and the field.
    """
    if not cfg.axes:
        return [Cell({}, cfg)]
    raw = cfg.model_dump(mode="json", exclude={"axes"})
    cells = []
    for combo in itertools.product(*(variants.items() for variants in cfg.axes.values())):
        cell_raw = copy.deepcopy(raw)
        for axis, (variant, overrides) in zip(cfg.axes, combo, strict=True):
            for key, value in overrides.items():
                source = f"axes.{axis}.{variant}.{key}"
                if key.split(".")[0] not in CELL_SECTIONS:
                    raise ConfigError(
                        f"{source}: cannot vary between cells; allowed sections: {', '.join(CELL_SECTIONS)}"
                    )
                set_dotted(cell_raw, key, value, source)
        variants = {axis: variant for axis, (variant, _) in zip(cfg.axes, combo, strict=True)}
        try:
            cells.append(Cell(variants, ExperimentConfig.model_validate(cell_raw)))
        except ValidationError as err:
            where = ", ".join(f"{a}={v}" for a, v in variants.items())
            raise ConfigError(f"axes (cell {where}): {describe_error(err)}") from None
    return cells


# ---------------------------------------------------------------- loading and overriding


def parse_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` (value parsed as YAML) to the raw config dict in place."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set transfer.train.epochs=5")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: value {text!r} is not valid YAML ({err.__class__.__name__})") from None
    set_dotted(raw, key, value, f"--set {key}")


def existing_key(section: dict[Any, Any], part: str) -> Any:
    """The key of ``section`` that the dotted-key segment ``part`` addresses: YAML reads ``{1: ...}`` with an
    integer key, which ``nodes.models.1`` must reach rather than add a string "1" beside it."""
    if part in section:
        return part
    return next((key for key in section if str(key) == part), part)


def set_dotted(raw: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Set ``dotted.key`` (list entries by index) in a raw config dict; ``source`` names the key in errors."""
    node: Any = raw
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                where = ".".join(parts[:depth])
                raise ConfigError(f"{source}: {where} has {len(node)} entries; allowed index 0..{len(node) - 1}")
            node = node[int(part)]
        else:
            node = node.setdefault(existing_key(node, part), {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"{source}: {'.'.join(parts[: depth + 1])} is a value, not a section")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"{source}: allowed index 0..{len(node) - 1}")
        node[int(last)] = value
    else:
        node[existing_key(node, last)] = value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``: nested sections merge, everything else (lists included) is replaced."""
    merged = dict(base)
    for key, value in update.items():
        both_dicts = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = deep_merge(merged[key], value) if both_dicts else value
    return merged


def load_config(path: Path, overrides: list[str] = ()) -> ExperimentConfig:  # type: ignore[assignment]
    """Read a YAML experiment, apply overrides, validate; any problem is one ConfigError line.

    A top-level ``extends: other.yaml`` (relative to this file) starts from that config.
    """
    raw = load_raw(path)
    for assignment in overrides:
        parse_override(raw, assignment)
    return validate_config(raw)


def missing_config(path: Path, referrer: Path | None) -> ConfigError:
    """A missing config in one line: the YAML whose ``extends`` named it, and the shipped config of that name if
    there is one (a user's own file gets no pointer to tune_configs/)."""
    shipped = SHIPPED_CONFIGS / Path(path).name
    hint = f"; raykd ships a config of that name: {shipped}" if shipped.is_file() else ""
    where = f"config {referrer}: extends: no such file {path}" if referrer else f"config {path}: no such file"
    return ConfigError(f"{where}{hint}")


def load_raw(path: Path, seen: tuple[Path, ...] = (), referrer: Path | None = None) -> dict[str, Any]:
    """The YAML mapping of ``path`` with its ``extends`` chain merged in, not yet validated; ``referrer`` is the
    YAML whose ``extends`` named ``path``."""
    if Path(path).resolve() in seen:
        raise ConfigError(f"config {path}: 'extends' loops back to itself")
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise missing_config(path, referrer) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config {path}: cannot be read ({err.__class__.__name__}: {err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config {path}: not valid YAML{where}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path}: expected a mapping of sections at the top level")
    if "extends" in raw:
        base = load_raw(Path(path).parent / str(raw.pop("extends")), (*seen, Path(path).resolve()), Path(path))
        raw = deep_merge(base, raw)
    return raw


def validate_config(raw: dict[str, Any]) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(describe_error(err)) from None


def describe_error(err: ValidationError) -> str:
    """The first validation error as one line: ``field.path = value: what is allowed``."""
    first = err.errors()[0]
    loc = list(first["loc"])
    if loc[:1] == ["methods"]:
        # a row's discriminator tags follow its index; elsewhere a key may share a method's name (transfer.miniplm)
        tags = next((i for i, p in enumerate(loc[2:], 2) if not is_method_tag(p)), len(loc))
        loc = loc[:2] + loc[tags:]
        loc = [part for i, part in enumerate(loc) if not (i == 3 and part in KNOB_FORMS)]  # a knob's form tag
    if loc[:1] == ["methods"] and len(loc) > 3 and isinstance(loc[-1], int):
        loc = loc[:-1]  # a knob's grid position: the value shown identifies it
    field = ""
    for part in loc:
        field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
    if first["type"] == "method_reference":
        return f"{field}.name: {first['ctx']['reason']}"
    if first["type"] == "union_tag_invalid":
        return f"{field}.name = {first['ctx']['tag']!r}: unknown method; allowed: {', '.join(METHODS)}"
    if first["type"] == "union_tag_not_found":
        return f"{field}.name: missing; a method row needs one of {', '.join(METHODS)} or 'package.module:Class'"
    if first["type"] == "extra_forbidden":
        parent = ".".join(str(p) for p in loc[:-1]) or "the top level"
        allowed = _allowed_keys(first["loc"][:-1])
        return f"{field}: unknown key in {parent}; allowed: {', '.join(allowed)}"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "value_error" and ":" in message.split(" ")[0]:
        return message  # our own cross-field checks already name their field
    shown = "" if first["type"] == "missing" else f" = {first['input']!r}"
    return f"{field or 'config'}{shown}: {message}"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section at ``loc`` (walking nested sections, lists and method tags)."""
    model: Any = ExperimentConfig
    for part in loc:
        if isinstance(part, int) or part in KNOB_FORMS:
            continue
        if is_method_tag(part):
            model = method_config_of(part, model)
            continue
        model = _model_in(model.model_fields[part].annotation)
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The first config model inside a field's annotation (through lists, dicts, unions and Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for m in map(_model_in, get_args(annotation)) if m is not None), None)


def describe_schema() -> str:
    """The config reference printed by ``--help``: every section, key, default and meaning."""
    lines: list[str] = []

    def walk(model: type[BaseModel], defaults: BaseModel | None, prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            default = getattr(defaults, name) if defaults is not None else field.default
            if isinstance(annotation, type) and issubclass(annotation, Section) and annotation is not ModelSpec:
                walk(annotation, default, f"{prefix}{name}.")
                continue
            shown = "" if field.is_required() else f" (default: {_show(default)})"
            lines.append(_wrapped(f"  {prefix}{name}{shown}  {field.description}"))

    walk(ExperimentConfig, None, "")
    lines.append("  methods[i].name, methods[i].label, and per method (list values are grid axes):")
    for name, method in METHOD_KNOBS.items():
        knobs = ", ".join(f"{knob.name}={knob.default} ({knob.description})" for knob in method.knobs)
        lines.append(_wrapped(f"    {name}: {knobs or 'no knobs'}; {method.summary}"))
    lines.append('    "package.module:Class": your own Method subclass; its dataclass fields are its knobs')
    return "\n".join(lines)


def _wrapped(line: str) -> str:
    """One ``--help`` entry in lines of at most HELP_WIDTH characters, its continuation indented under it."""
    indent = " " * (len(line) - len(line.lstrip()) + 4)
    return textwrap.fill(line, HELP_WIDTH, subsequent_indent=indent, break_on_hyphens=False, drop_whitespace=True)


def _show(value: Any) -> str:
    if isinstance(value, BaseModel):
        return ", ".join(f"{k}={v}" for k, v in value.model_dump().items() if v is not None)
    return str(value)
