"""Checks of plain mappings (YAML) against config dataclasses, shared by the train and
quickstart configs (top level, so that neither side imports the other or the CLI).

Every field is checked once, before any work, against its dataclass annotation (type) and
`RANGES` (value), so that a wrong value is a one-line error naming the file, the field and the
value, never a traceback from deep inside training or a silently odd run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml


class DuplicateKeyError(yaml.YAMLError):
    """A mapping gives one key twice; PyYAML would silently keep the last value."""

    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(f"line {line}: key {key!r} given twice (also on line {first})")


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (`lr` twice, two `sae:`)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first:
                    raise DuplicateKeyError(key, line, first[key])
                first[key] = line
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                pass
        return super().construct_mapping(node, deep=deep)


class _Loader(StrictLoader):
    """StrictLoader that also reads `1e-3` as a number (YAML 1.2; PyYAML's 1.1 wants `1.0e-3`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping; errors name the file."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)
    except DuplicateKeyError as err:
        raise ValueError(f"config {path}: {err}; keep one") from None
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read config {path}: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"config {path} must be a YAML mapping, got {type(raw).__name__}")
    return raw


# ----------------------------------------------------------------------------- ranges


@dataclass(frozen=True)
class Bound:
    """low <= value (or low < value) <= high."""

    low: float
    high: float = math.inf
    low_open: bool = False

    def problem(self, value: float) -> str | None:
        below = value <= self.low if self.low_open else value < self.low
        if not below and value <= self.high:
            return None
        need = f"{'>' if self.low_open else '>='} {self.low:g}"
        need += "" if self.high == math.inf else f" and <= {self.high:g}"
        negative = " (negative)" if value < 0 <= self.low else ""
        return f"must be {need}, got {value!r}{negative}"


POSITIVE = Bound(0, low_open=True)
NON_NEGATIVE = Bound(0)
FRACTION = Bound(0, 1)

# Value ranges by field name (the names mean the same in every config that has them: SAELens's
# runner, logger and SAE configs, the quickstart's and its tiny LM's). Numbers nested in a
# field (the quickstart's `coefficients`) are each checked.
POSITIVE_FIELDS = """d_in d_sae k context_size training_tokens train_batch_size_tokens
    store_batch_size_prompts n_batches_in_buffer eval_batch_size_prompts n_restart_cycles
    dead_feature_window feature_sampling_window n_batches_for_norm_estimate
    gradient_accumulation_steps wandb_log_frequency eval_every_n_wandb_logs lr lp_norm
    grad_clip_norm decoder_init_norm n_eval_sequences eval_batch_size n_layers d_model d_head
    n_ctx steps batch_size max_loss_ratio corpus_bytes"""
NON_NEGATIVE_FIELDS = """l1_coefficient kl_coefficient out_to_in_coefficient
    in_to_orig_coefficient coefficients lr_warm_up_steps lr_decay_steps l1_warm_up_steps lr_end
    n_eval_batches n_checkpoints dead_feature_threshold warmup_steps hook_head_index"""
FRACTION_FIELDS = "adam_beta1 adam_beta2 activations_mixing_fraction heldout_fraction"
RANGES: dict[str, Bound] = {
    name: bound
    for names, bound in (
        (POSITIVE_FIELDS, POSITIVE),
        (NON_NEGATIVE_FIELDS, NON_NEGATIVE),
        (FRACTION_FIELDS, FRACTION),
    )
    for name in names.split()
}


def _range_problem(name: str, value: Any) -> tuple[str, str] | None:
    """(where inside the value, problem) for the first number out of `name`'s range."""
    bound = RANGES.get(name)
    if bound is None or value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        problem = bound.problem(value)
        return None if problem is None else ("", problem)
    if isinstance(value, Mapping):
        parts = [(f".{k}", v) for k, v in value.items()]
    elif isinstance(value, list | tuple):
        parts = [(f"[{i}]", v) for i, v in enumerate(value)]
    else:
        return None
    for where, item in parts:
        found = _range_problem(name, item)
        if found:
            return where + found[0], found[1]
    return None


# ----------------------------------------------------------------------------- types

_NAMES: dict[Any, str] = {
    bool: "true or false", int: "an integer", float: "a number", str: "a string",
    list: "a list", tuple: "a list", dict: "a mapping", type(None): "null",
}  # fmt: skip
_PLURALS: dict[Any, str] = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}


def describe(hint: Any) -> str:
    """An annotation in words, for error messages."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple):
        return "a list" + (f" of {_PLURALS[args[0]]}" if args and args[0] in _PLURALS else "")
    if origin is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))


class FieldError(ValueError):
    """A config value of the wrong type or range; `label` is the field's dotted path."""

    def __init__(self, label: str, problem: str) -> None:
        super().__init__(f"{label}: {problem}")
        self.label, self.problem = label, problem


def _wrong(label: str, value: Any, hint: Any) -> FieldError:
    got = f"{value!r} ({describe(type(value))})"
    if isinstance(value, str) and _is_number(value):
        got += "; write numbers without quotes"
    return FieldError(label, f"expected {describe(hint)}, got {got}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_value(label: str, value: Any, hint: Any) -> Any:
    """`value` as annotation `hint` asks: ints widen to floats, lists to tuples, mappings to
    the annotated dataclass (checked field by field); FieldError naming `label` otherwise."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or isinstance(hint, TypeVar):
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            with contextlib.suppress(FieldError):
                return check_value(label, value, arg)
        raise _wrong(label, value, hint)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise FieldError(label, f"must be {describe(hint)}, got {value!r}")
    if hint is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _wrong(label, value, hint)
        if not math.isfinite(value):
            raise FieldError(label, f"must be a finite number, got {value!r}")
        return float(value)
    if hint in (bool, int, str):
        if isinstance(value, hint) and (hint is bool or not isinstance(value, bool)):
            return value
        raise _wrong(label, value, hint)
    if origin is list and isinstance(value, list):
        return [check_value(f"{label}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin is tuple and isinstance(value, list | tuple):
        item = args[0] if args else Any
        return tuple(check_value(f"{label}[{i}]", v, item) for i, v in enumerate(value))
    if origin is dict and isinstance(value, Mapping):
        key_hint, item_hint = args or (Any, Any)
        return {
            check_value(f"{label} key", k, key_hint): check_value(f"{label}.{k}", v, item_hint)
            for k, v in value.items()
        }
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, Mapping):
            return _build(hint, value, label)
        if isinstance(value, hint):  # built in Python: check its fields all the same
            _check({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, hint, label)
            return value
    if origin in (list, tuple, dict) or dataclasses.is_dataclass(hint):
        raise _wrong(label, value, hint)
    return value


def _check(raw: Mapping[str, Any], cls: type, section: str) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - allowed, key=str)
    if unknown:
        raise FieldError(section, f"unknown field(s) {unknown} for {cls.__name__}")
    out = {}
    for name, value in raw.items():
        label = f"{section}.{name}" if section else name
        out[name] = check_value(label, value, hints[name])
        problem = _range_problem(name, out[name])
        if problem:
            raise FieldError(label + problem[0], problem[1])
    return out


def _build(cls: type, raw: Mapping[str, Any], section: str) -> Any:
    fields = _check(raw, cls, section)
    try:
        return cls(**fields)
    except (TypeError, ValueError) as err:
        if isinstance(err, FieldError):
            raise
        raise FieldError(section, str(err)) from err


def check_fields(source: str, raw: Any, cls: type, section: str = "") -> dict[str, Any]:
    """`raw`'s keys as fields of dataclass `cls`, each value of its annotated type and in its
    range (nested dataclass fields built); ValueError "SOURCE: FIELD: problem" otherwise."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"{source}: {_wrong(section or cls.__name__, raw, cls).args[0]}")
    try:
        return _check(raw, cls, section)
    except FieldError as err:
        raise ValueError(f"{source}: {err}" if err.label else f"{source}: {err.problem}") from None


def build_config(source: str, raw: Any, cls: type, section: str = "", **extra: Any) -> Any:
    """`cls(**checked raw, **extra)`; its own validation errors are named like field errors."""
    fields = check_fields(source, raw, cls, section)
    try:
        return cls(**fields, **extra)
    except (TypeError, ValueError) as err:
        where = f"{source}: {section}" if section else source
        raise ValueError(f"{where}: {err}") from err
