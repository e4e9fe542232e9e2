"""The YAML schema of a method row, built from the method's knobs without importing the method (or torch).

Built-in methods' knobs are read from their sources (``raykd.methods.knobs``); a row named
``"package.module:Class"`` imports that user class and takes its dataclass fields. A knob is a list (a Ray
Tune grid axis, a scalar being an axis of one value) or, for a numeric knob, a range ``{low, high, log}`` that
a searcher samples (``tune.search``); the knob's own rule applies to both ends.
"""

from __future__ import annotations

import itertools
import re
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    ModelWrapValidatorHandler,
    SerializeAsAny,
    Tag,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from raykd.errors import ConfigError
from raykd.methods import METHODS, method_class
from raykd.methods.knobs import MethodKnobs, from_class, from_source
from raykd.references import is_reference

if TYPE_CHECKING:
    from raykd.methods.base import Method


def _as_axis(value: Any) -> Any:
    return value if isinstance(value, (list, dict, KnobRange)) else [value]


class KnobRange(BaseModel):
    """A numeric knob's interval for a searcher to sample (never a grid axis); ``log``: sampled on a log scale."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> KnobRange:
        if not self.low < self.high:
            raise ValueError(f"low {self.low:g} must be below high {self.high:g}; allowed: low < high")
        if self.log and self.low <= 0:
            raise ValueError(f"low {self.low:g} has no logarithm; allowed: low > 0 with log: true, or log: false")
        return self


#: Discriminator tags of a knob's two forms, left out of error locations.
KNOB_FORMS = ("range", "list")


def _knob_form(value: Any) -> str:
    return "range" if isinstance(value, (dict, KnobRange)) else "list"


def _is_number(annotation: Any) -> bool:
    """Whether a knob's type is an int or a float (not a bool or a Literal): only those take a range."""
    base = get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation
    return base in (int, float)


#: What a row label or axis name may hold: it names table rows and columns and MLflow metrics, whose
#: keys allow only these characters (path components are made from it by ``raykd.files.safe_component``).
LABEL = re.compile(r"[\w .:-]{1,100}")
LABEL_RULE = "1..100 letters, digits, spaces and _ . : -"


class MethodConfig(BaseModel):
    """Base of the generated per-method configs: knob fields hold lists (grid axes), every number finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # as every config section

    label: str | None = Field(None, description="row name in the results table (default: method name)")

    @field_validator("label")
    @classmethod
    def _plain_label(cls, label: str | None) -> str | None:
        if label is not None and not LABEL.fullmatch(label):
            raise ValueError(f"Input should be {LABEL_RULE} (it names table rows and MLflow metrics)")
        return label

    def display(self) -> str:
        return self.label or self.name  # type: ignore[attr-defined]

    def knobs(self) -> list[str]:
        return [f for f in type(self).model_fields if f not in ("name", "label")]

    def ranges(self) -> dict[str, KnobRange]:
        """The knobs given as ranges: only a searcher samples them (``tune.search`` random or optuna)."""
        return {n: getattr(self, n) for n in self.knobs() if isinstance(getattr(self, n), KnobRange)}

    def searched(self) -> bool:
        """Whether the row has more than one setting: a range, or a list of several values."""
        return bool(self.ranges()) or len(self.grid()) > 1

    def grid(self) -> list[dict[str, Any]]:
        """Every concrete setting: the product of the knob lists (a row with ranges has no grid: an error)."""
        if self.ranges():
            raise ValueError(f"{self.display()}: knobs {', '.join(self.ranges())} are ranges, which have no grid")
        names = self.knobs()
        return [dict(zip(names, v, strict=True)) for v in itertools.product(*(getattr(self, n) for n in names))]

    def first(self) -> dict[str, Any]:
        """One concrete setting (each list's first value, each range's low end): what the method is, whatever
        its knobs (its teachers, whether it reads the initial student)."""
        values = {n: getattr(self, n) for n in self.knobs()}
        return {n: v.low if isinstance(v, KnobRange) else v[0] for n, v in values.items()}

    def build(self, setting: dict[str, Any]) -> Method:
        """The method at one grid point; its class is imported only now (it brings torch)."""
        return method_class(self.name)(**setting)  # type: ignore[attr-defined]


def _method_config(name: str, method: MethodKnobs) -> type[MethodConfig]:
    """A method's YAML schema from its knobs: each knob becomes a list (grid axis) of its annotated type, and a
    numeric knob may also be a range whose ends follow the same rule."""
    fields: dict[str, Any] = {"name": (Literal[name], ...)}  # type: ignore[valid-type]
    for knob in method.knobs:
        axis: Any = Annotated[list[knob.annotation], Field(min_length=1)]  # type: ignore[name-defined]
        if _is_number(knob.annotation):
            ends = create_model(
                f"{name}-{knob.name}-range", __base__=KnobRange, low=(knob.annotation, ...), high=(knob.annotation, ...)
            )
            tagged = Union[Annotated[ends, Tag("range")], Annotated[axis, Tag("list")]]  # noqa: UP007
            axis = Annotated[tagged, Discriminator(_knob_form)]
        fields[knob.name] = (Annotated[axis, BeforeValidator(_as_axis)], [knob.default])
    return create_model(f"{name}-config", __base__=MethodConfig, **fields)


#: Built-in methods' knobs, read from their sources (no torch), and the schema of each.
METHOD_KNOBS = {name: from_source(reference) for name, reference in METHODS.items()}
METHOD_CONFIGS = {name: _method_config(name, knobs) for name, knobs in METHOD_KNOBS.items()}
#: The discriminator tag of a row naming a user's method class.
USER_METHOD = "reference"


class UserMethodConfig(MethodConfig):
    """A row whose name is ``"package.module:Class"``: the class is imported and its dataclass fields are its knobs."""

    name: str

    @model_validator(mode="wrap")
    @classmethod
    def _as_its_class(cls, data: Any, handler: ModelWrapValidatorHandler[MethodConfig]) -> MethodConfig:
        if isinstance(data, MethodConfig):
            return data
        reference = data["name"]
        try:
            return _user_method_config(reference).model_validate(data)
        except ValidationError as err:  # located under the reference, so an unknown key lists the class's knobs
            errors = [
                {"type": PydanticCustomError(e["type"], "{msg}", {"msg": e["msg"]}), "loc": (reference, *e["loc"])}
                | {"input": e["input"]}
                for e in err.errors()
            ]
            raise ValidationError.from_exception_data(err.title, errors) from None  # type: ignore[arg-type]


@cache
def _user_method_config(reference: str) -> type[MethodConfig]:
    """The schema of a user's method class; a bad reference is one error.

    Memoised per reference as a pure function: the class a reference names is fixed once Python has imported its
    module, and the schema is an immutable class built from its fields, so every run in the process may share it
    (a failed build raises and is not remembered)."""
    try:
        knobs = from_class(method_class(reference, "name"))
    except (ConfigError, TypeError) as err:
        reason = str(err).removeprefix("name: ")
        raise PydanticCustomError("method_reference", "{reason}", {"reason": reason}) from None
    return _method_config(reference, knobs)


def _method_tag(row: Any) -> str | None:
    """Which schema validates a row: a built-in method's name, ``USER_METHOD`` for a reference."""
    name = row.get("name") if isinstance(row, dict) else getattr(row, "name", None)
    return USER_METHOD if isinstance(name, str) and is_reference(name) else name


AnyMethodConfig = SerializeAsAny[  # the runtime class (a user method's own config) dumps its knobs
    Annotated[
        Union[  # noqa: UP007
            tuple(Annotated[c, Tag(n)] for n, c in {**METHOD_CONFIGS, USER_METHOD: UserMethodConfig}.items())
        ],
        Discriminator(_method_tag),
    ]
]


def is_method_tag(part: Any) -> bool:
    """Whether a validation error's location part is a row's discriminator tag (a built-in name or a reference)."""
    return part in METHOD_CONFIGS or part == USER_METHOD or (isinstance(part, str) and is_reference(part))


def method_config_of(tag: str, default: Any) -> Any:
    """The row schema a location tag names (built-in, or a user reference that builds one), else ``default``."""
    if tag in METHOD_CONFIGS or not is_reference(tag):
        return METHOD_CONFIGS.get(tag, default)
    try:
        return _user_method_config(tag)
    except PydanticCustomError:
        return default
