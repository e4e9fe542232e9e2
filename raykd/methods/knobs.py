"""A method's knobs (its frozen dataclass fields), read without importing torch.

Validating a config and printing ``--help`` must be fast, and every built-in method file imports torch.
So a built-in method's knobs are read from its source with ``ast``: each annotated class-body assignment
(base classes first, as dataclasses order them) is a knob, its annotation evaluated among
Annotated/Field/Literal and the builtins, its default read with ``ast.literal_eval``. A user's method
class is already imported, so ``from_class`` reads the same facts from the dataclass itself;
tests/test_methods.py checks that both readings agree for every registered method.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import Field

#: What a knob's annotation may name in a built-in method's source.
ANNOTATION_NAMESPACE: dict[str, Any] = {**vars(builtins), "Annotated": Annotated, "Field": Field, "Literal": Literal}


@dataclass(frozen=True)
class Knob:
    """One knob: its name, its annotation (``Annotated[float, Field(gt=0, description=...)]``) and default."""

    name: str
    annotation: Any
    default: Any

    @property
    def description(self) -> str:
        return next((m.description for m in getattr(self.annotation, "__metadata__", ()) if m.description), "")


@dataclass(frozen=True)
class MethodKnobs:
    """What the config schema and ``--help`` need of a method: its name, one-line summary and knobs."""

    name: str
    summary: str
    knobs: tuple[Knob, ...]


def from_class(cls: type) -> MethodKnobs:
    """The knobs of an imported method class: its dataclass fields with their annotations and defaults."""
    hints = get_type_hints(cls, include_extras=True)
    knobs = []
    for field in dataclasses.fields(cls):
        if field.default is dataclasses.MISSING:
            raise TypeError(f"method {cls.__qualname__}: knob {field.name!r} needs a default value")
        knobs.append(Knob(field.name, hints[field.name], field.default))
    summary = (cls.__doc__ or "").strip().splitlines()
    return MethodKnobs(cls.name, summary[0] if summary else "", tuple(knobs))  # type: ignore[attr-defined]


def from_source(reference: str) -> MethodKnobs:
    """The knobs of the class ``"package.module:Class"`` read from its source file, without importing it."""
    module, _, class_name = reference.partition(":")
    found = _SourceClass.find(module, class_name)
    lineage = found.lineage()
    knobs: dict[str, Knob] = {}
    for source in reversed(lineage):
        knobs.update(source.knobs())
    name = next((n for n in (source.declared_name() for source in lineage) if n is not None), None)
    if name is None:
        raise TypeError(f"method {reference}: no class attribute 'name'")
    docstring = ast.get_docstring(found.node) or ""
    return MethodKnobs(name, docstring.splitlines()[0] if docstring else "", tuple(knobs.values()))


@dataclass(frozen=True)
class _SourceClass:
    """A class definition in a module's parsed source."""

    module: str
    node: ast.ClassDef
    tree: ast.Module

    @classmethod
    def find(cls, module: str, name: str) -> _SourceClass:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise ImportError(f"no source for module {module!r}")
        tree = ast.parse(Path(spec.origin).read_text(), spec.origin)
        node = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)
        if node is None:
            raise ImportError(f"module {module!r} defines no class {name!r}")
        return cls(module, node, tree)

    def lineage(self) -> list[_SourceClass]:
        """This class, then its bases defined in raykd's sources (single inheritance, as every method uses)."""
        imported = {
            alias.asname or alias.name: statement.module
            for statement in self.tree.body
            if isinstance(statement, ast.ImportFrom) and statement.module
            for alias in statement.names
        }
        local = {n.name for n in self.tree.body if isinstance(n, ast.ClassDef)}
        for base in self.node.bases:
            if not isinstance(base, ast.Name):
                continue
            if base.id in local:
                return [self, *_SourceClass.find(self.module, base.id).lineage()]
            if imported.get(base.id, "").startswith("raykd."):
                return [self, *_SourceClass.find(imported[base.id], base.id).lineage()]
        return [self]

    def knobs(self) -> dict[str, Knob]:
        """Annotated assignments of the class body, ``ClassVar`` ones excepted: the dataclass fields."""
        knobs = {}
        for statement in self.node.body:
            if not isinstance(statement, ast.AnnAssign) or not isinstance(statement.target, ast.Name):
                continue
            if "ClassVar" in ast.unparse(statement.annotation):
                continue
            name = statement.target.id
            if statement.value is None:
                raise TypeError(f"method {self.node.name}: knob {name!r} needs a default value")
            annotation = eval(  # noqa: S307 - raykd's own source, in a namespace of typing names and builtins
                compile(ast.Expression(statement.annotation), self.module, "eval"), dict(ANNOTATION_NAMESPACE)
            )
            knobs[name] = Knob(name, annotation, ast.literal_eval(statement.value))
        return knobs

    def declared_name(self) -> str | None:
        """The ``name = "..."`` class attribute (the method's registry name), if this class sets it."""
        return next(
            (
                ast.literal_eval(statement.value)
                for statement in self.node.body
                if isinstance(statement, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "name" for t in statement.targets)
            ),
            None,
        )
