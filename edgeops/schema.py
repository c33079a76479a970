"""Strict JSON (de)serialisation of dataclass records.

The MQTT contract and the bundle manifest are dataclasses; this module turns them into JSON and
back, refusing anything the dataclass does not describe: missing or unknown fields, wrong types,
booleans posing as numbers, NaN, out-of-range values. One validator for every message keeps the
contract in the dataclass definitions instead of in scattered ``if`` statements.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import math
import re
import types
from typing import Annotated, Any, ClassVar, TypeVar, Union, get_args, get_origin, get_type_hints

from edgeops.errors import PayloadDecodeError, SchemaValidationError, SchemaVersionError

#: Largest JSON payload accepted from the network (chunks are binary and bounded by the manifest).
MAX_JSON_BYTES = 1024 * 1024

R = TypeVar("R", bound="Record")


@dataclasses.dataclass(frozen=True)
class Pattern:
    """Constraint: a string must match ``regex`` in full. Use as ``Annotated[str, Pattern(...)]``."""

    regex: str

    def check(self, value: Any, path: str) -> None:
        if isinstance(value, str) and not _compiled(self.regex).fullmatch(value):
            raise _fail(path, f"{value[:80]!r} does not match {self.regex}")


@dataclasses.dataclass(frozen=True)
class Range:
    """Constraint: a number must lie in [ge, le]."""

    ge: float | None = None
    le: float | None = None

    def check(self, value: Any, path: str) -> None:
        if self.ge is not None and value < self.ge:
            raise _fail(path, f"{value} is below the minimum {self.ge}")
        if self.le is not None and value > self.le:
            raise _fail(path, f"{value} is above the maximum {self.le}")


@dataclasses.dataclass(frozen=True)
class MaxLen:
    """Constraint: a string, list or object has at most ``n`` elements."""

    n: int

    def check(self, value: Any, path: str) -> None:
        if len(value) > self.n:
            raise _fail(path, f"length {len(value)} exceeds {self.n}")


Constraint = Pattern | Range | MaxLen


@functools.cache
def _compiled(regex: str) -> re.Pattern[str]:
    return re.compile(regex)


_HINTS: dict[type, dict[str, Any]] = {}
_FIELDS: dict[type, tuple[dataclasses.Field[Any], ...]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = get_type_hints(cls, include_extras=True)
    return hints


def _fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    fields = _FIELDS.get(cls)
    if fields is None:
        fields = _FIELDS[cls] = tuple(f for f in dataclasses.fields(cls) if f.init)
    return fields


def _fail(path: str, why: str) -> SchemaValidationError:
    return SchemaValidationError(f"{path}: {why}")


def _decode_value(value: Any, tp: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        base, *constraints = get_args(tp)
        decoded = _decode_value(value, base, path)
        if decoded is not None:
            for constraint in constraints:
                if isinstance(constraint, (Pattern, Range, MaxLen)):
                    constraint.check(decoded, path)
        return decoded
    if origin is Union or origin is types.UnionType:
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _fail(path, "must not be null")
        options = [a for a in args if a is not type(None)]
        last: SchemaValidationError | None = None
        for option in options:
            try:
                return _decode_value(value, option, path)
            except SchemaValidationError as exc:
                last = exc
        assert last is not None
        raise last
    if value is None:
        raise _fail(path, "must not be null")
    if tp is bool:
        if type(value) is bool:
            return value
        raise _fail(path, f"expected a boolean, got {type(value).__name__}")
    if tp is int:
        if type(value) is int:
            return value
        raise _fail(path, f"expected an integer, got {type(value).__name__}")
    if tp is float:
        if type(value) in (int, float):
            if not math.isfinite(value):
                raise _fail(path, "must be a finite number")
            return float(value)
        raise _fail(path, f"expected a number, got {type(value).__name__}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise _fail(path, f"expected a string, got {type(value).__name__}")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in tp)
            raise _fail(path, f"{value!r} is not one of {allowed}") from None
    if isinstance(tp, type) and issubclass(tp, Record):
        if not isinstance(value, dict):
            raise _fail(path, f"expected an object, got {type(value).__name__}")
        return tp._from_fields(value, path)
    if origin is list:
        if not isinstance(value, list):
            raise _fail(path, f"expected a list, got {type(value).__name__}")
        (item_tp,) = get_args(tp)
        return [_decode_value(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(path, f"expected an object, got {type(value).__name__}")
        key_tp, val_tp = get_args(tp)
        if key_tp is not str:
            raise TypeError(f"{path}: only str keys are supported")
        return {k: _decode_value(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    raise TypeError(f"{path}: unsupported schema type {tp!r}")


def _encode_value(value: Any) -> Any:
    if isinstance(value, Record):
        return value._to_fields()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list):
        return [_encode_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode_value(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True)
class Record:
    """A strictly validated JSON object without a schema version of its own (nested records)."""

    def _to_fields(self) -> dict[str, Any]:
        return {f.name: _encode_value(getattr(self, f.name)) for f in _fields(type(self))}

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values (no schema version)."""
        return self._to_fields()

    @classmethod
    def _from_fields(cls: type[R], data: dict[str, Any], path: str) -> R:
        hints = _hints(cls)
        known = {f.name for f in _fields(cls)}
        unknown = sorted(set(data) - known - cls._envelope_keys())
        if unknown:
            raise _fail(path, f"unknown field(s) {', '.join(unknown)}")
        kwargs: dict[str, Any] = {}
        for f in _fields(cls):
            fpath = f"{path}.{f.name}"
            if f.name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise _fail(fpath, "is required")
                continue
            kwargs[f.name] = _decode_value(data[f.name], hints[f.name], fpath)
        return cls(**kwargs)

    @classmethod
    def _envelope_keys(cls) -> frozenset[str]:
        return frozenset()

    def validate(self) -> None:
        """Check this record against its own schema, so bad values fail at the sender too."""
        type(self)._from_fields(self._to_fields(), type(self).__name__)


@dataclasses.dataclass(frozen=True)
class Message(Record):
    """A top-level payload: a JSON object carrying ``schema_version``.

    ``SCHEMA_VERSION`` is per message type; a receiver refuses any other version instead of
    guessing what an unknown field means.
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    @classmethod
    def _envelope_keys(cls) -> frozenset[str]:
        return frozenset({"schema_version"})

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, schema version first."""
        return {"schema_version": self.SCHEMA_VERSION, **self._to_fields()}

    @classmethod
    def from_dict(cls: type[R], data: Any) -> R:
        """Validate ``data`` (already parsed JSON) and build the message, or raise a ProtocolError."""
        if not isinstance(data, dict):
            raise PayloadDecodeError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        expected = cls.SCHEMA_VERSION  # type: ignore[attr-defined]
        if type(version) is not int:
            raise SchemaVersionError(f"{cls.__name__}: schema_version is missing or not an integer")
        if version != expected:
            raise SchemaVersionError(f"{cls.__name__}: schema_version {version} is not supported (expected {expected})")
        return cls._from_fields(data, cls.__name__)

    def encode(self) -> bytes:
        """Compact UTF-8 JSON; NaN and infinities are refused rather than written as invalid JSON."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def decode(cls: type[R], payload: bytes | bytearray | memoryview | str) -> R:
        """Parse and validate a payload received from the network."""
        return cls.from_dict(parse_json(payload, cls.__name__))  # type: ignore[attr-defined, no-any-return]


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def parse_json(payload: bytes | bytearray | memoryview | str, what: str = "payload") -> Any:
    """Parse untrusted JSON with a size limit and without NaN/Infinity extensions."""
    size = len(payload)
    if size > MAX_JSON_BYTES:
        raise PayloadDecodeError(f"{what}: {size} bytes exceeds the {MAX_JSON_BYTES}-byte limit")
    try:
        text = payload if isinstance(payload, str) else bytes(payload).decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PayloadDecodeError(f"{what}: not valid UTF-8 JSON ({exc})") from None


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces): what hashes and signatures cover."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()
