"""The method contract and registry.

A black-box method is a generator function ``fn(req, **params)``: it yields lists of queries
(:mod:`salient.queries`), receives their results in the same order, and returns an array
(T, H, W) with one map per target in ``req.targets``. It never calls the model. Generators compose
with ``yield from`` (BOREx runs its prior this way).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import SalientError, short_repr
from .drive import first_queries

MethodGen = Generator[list, list, np.ndarray]


@dataclass(frozen=True)
class Request:
    """What a method knows about the item it explains."""

    item: str
    size: tuple[int, int]  # model input (H, W)
    targets: tuple[int, ...]
    base: np.ndarray  # (T,) scores of the unmasked input for the targets
    seed: int = 0
    channels: int = 3
    extra: dict[str, Any] = field(default_factory=dict)
    frames: int = 0  # > 0: the item is a clip (C, frames, H, W); its maps are (frames, H, W)

    @property
    def shape(self) -> tuple[int, ...]:
        """The full shape of one map: (T, H, W) for a clip, (H, W) for an image."""
        return (self.frames, *self.size) if self.frames else tuple(self.size)


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable[..., MethodGen]
    signed: bool  # its maps may hold negative values
    doc: str
    # Parameters that name another method, whose own parameters then arrive as ``<name>.<param>``
    # (e.g. ``prior.n_masks``), with this method's default overrides per named method (see check_nested).
    nested: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict, hash=False, compare=False)
    # The sign of its maps means support (+) vs opposition (−) of the class, so they are shown on the
    # diverging red/blue scale around 0 (Saliency.diverging); register sets it (default: ``signed``).
    diverging: bool = False
    # What the model decides about the parameters (``check(params, model)``, SalientError if bad), run by
    # check_model before any work: e.g. the CAMs' layer, which must exist in the model.
    check: Callable[[dict[str, Any], Any], None] | None = field(default=None, hash=False, compare=False)
    # The kind of model it explains (Model.output): "classes" (classifiers), or "reconstruction" (recon:
    # an autoencoder, no class scores: the engine asks for none and the map's target is 0).
    output: str = "classes"

    @property
    def defaults(self) -> dict[str, Any]:
        sig = inspect.signature(self.fn)
        return {k: p.default for k, p in list(sig.parameters.items())[1:] if p.default is not inspect.Parameter.empty}

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Validate names and coerce types (strings from ``--set`` included) against the defaults."""
        defaults = self.defaults
        out = dict(defaults)
        given: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            prefix, dot, rest = key.partition(".")
            if dot and prefix in self.nested:
                given.setdefault(prefix, {})[rest] = value
                continue
            if key not in defaults:
                raise SalientError(
                    f"unknown parameter {key!r} for method {self.name}; valid: {', '.join(sorted(defaults)) or 'none'}"
                )
            out[key] = coerce(key, value, defaults[key], self.name)
            if isinstance(defaults[key], (int, float, tuple)):  # a fill (a name or a number) is check_fill's
                check_finite(key, out[key], self.name, value)
        for prefix in self.nested:
            out.update(self.check_nested(prefix, out[prefix], given.get(prefix, {})))
        return out

    def check_nested(self, prefix: str, target: Any, given: dict[str, Any]) -> dict[str, Any]:
        """The parameters of the method that parameter ``prefix`` names (``target``), as ``prefix.<name>``
        keys: that method's defaults, overridden by this method's defaults for it, then by ``given``,
        all checked by that method. A ``target`` that is not a method name (e.g. a map) takes none."""
        if not isinstance(target, str):
            if given:
                raise SalientError(f"{self.name}: {prefix}.* parameters need {prefix} to be a method name")
            return {}
        try:
            checked = get_method(target).check_params({**self.nested[prefix].get(target, {}), **given})
        except SalientError as e:
            raise SalientError(f"{self.name} {prefix}.*: {e}") from None
        return {f"{prefix}.{k}": v for k, v in checked.items()}

    def check_values(self, params: dict[str, Any], size: tuple[int, int], channels: int = 3, frames: int = 0) -> None:
        """Run the generator on a stand-in request (class 0, zero base score) up to its first queries
        and close it: bad values (p = 0, a window larger than the input) raise their SalientError
        before any work, instead of once per item. ``params`` are checked ones (``check_params``);
        errors other than SalientError (a method needing more of the request) are not this check's."""
        req = Request("check", tuple(size), (0,), np.zeros(1, dtype=np.float32), 0, channels, frames=frames)
        try:
            first_queries(self.fn(req, **params))
        except SalientError:
            raise
        except Exception:  # noqa: BLE001 - see the docstring
            pass

    def check_model(self, params: dict[str, Any], model: Any, sized: bool = True) -> None:
        """Check ``params`` (checked ones) against ``model`` before any work, once rather than per item:
        their values on the model's input size (check_values: RISE cells larger than the input, DiDA grids)
        and the method's own ``check`` (a CAM layer that the model does not have), then those of the
        methods its nested parameters name (a BOREx prior's layer). ``sized=False`` leaves out the values
        on the input size (whole mode: each item has its own size, and its run checks them)."""
        output = getattr(model, "output", "classes")
        if output != self.output:
            raise SalientError(f"{self.name} explains models whose output is {self.output}; {model.name}'s is "
                               f"{output}" + (" (use method recon)" if output == "reconstruction" else ""))
        if sized:
            self.check_values(params, tuple(model.input_size), model.channels, getattr(model, "frames", 0))
        if self.check is not None:
            try:
                self.check(params, model)
            except SalientError as e:
                raise SalientError(f"{self.name}: {e}") from None
        for prefix in self.nested:
            if isinstance(params.get(prefix), str):
                inner = {k[len(prefix) + 1 :]: v for k, v in params.items() if k.startswith(f"{prefix}.")}
                try:
                    get_method(params[prefix]).check_model(inner, model, sized)
                except SalientError as e:
                    raise SalientError(f"{self.name} {prefix}.*: {e}") from None


METHODS: dict[str, Method] = {}


def register(name: str, signed: bool, nested: dict[str, dict[str, dict[str, Any]]] | None = None,
             diverging: bool | None = None, check: Callable[[dict[str, Any], Any], None] | None = None,
             output: str = "classes") -> Callable:
    """Register a method generator; ``nested`` declares parameters that name other methods (Method.nested).

    ``signed``: its maps may be negative. ``diverging`` (default: ``signed``): their sign means support
    vs opposition of the class (DiDA, occlusion); False for a signed map whose sign carries no such
    meaning (BOREx, GP), which is then shown on the relative scale of unsigned maps. ``check``: see Method.check.
    ``output``: the kind of model it explains (Method.output)."""
    if diverging and not signed:
        raise ValueError(f"method {name}: a diverging map is signed")

    def deco(fn: Callable[..., MethodGen]) -> Callable[..., MethodGen]:
        METHODS[name] = Method(name, fn, signed, (fn.__doc__ or "").strip().split("\n")[0], dict(nested or {}),
                               signed if diverging is None else diverging, check, output)
        return fn

    return deco


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise SalientError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]


def _parse_seq(value: Any) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    s = str(value).strip().strip("()[]")
    return [v for v in s.replace("x", ",").split(",") if v.strip()]


def coerce(key: str, value: Any, default: Any, method: str) -> Any:
    """Coerce ``value`` to the type of ``default`` (bool, int, float, str, tuples of numbers). A boolean
    is not a number (``n_masks=True`` is an error, not one mask); true/false strings are booleans for
    bool parameters."""
    try:
        if isinstance(value, bool) and not isinstance(default, bool) and isinstance(default, (int, float, tuple)):
            raise TypeError("a boolean is not a number")
        if default is None or isinstance(value, type(default)) and not isinstance(default, tuple):
            if isinstance(value, str) and default is None:
                return _auto(value)
            return value
        if isinstance(default, bool):
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if isinstance(default, int):
            f = float(value)
            if f != int(f):
                raise ValueError
            return int(f)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            kind = type(default[0]) if default else float
            items = _parse_seq(value)
            if any(isinstance(v, bool) for v in items):
                raise TypeError("a boolean is not a number")
            return tuple(kind(float(v)) if kind is int else kind(v) for v in items)
        if isinstance(default, str):
            return _auto(value) if isinstance(value, str) else value
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(float("inf"))
        pass
    raise SalientError(
        f"parameter {key!r} of method {method} expects {type(default).__name__} like {default!r}, "
        f"got {short_repr(value)}"
    )


def check_finite(key: str, value: Any, method: str, given: Any = None) -> Any:
    """``value`` (a coerced number or tuple of numbers, from ``given``), refused if it is or holds a NaN or
    an infinity: no parameter has a use for them (a non-finite baseline makes non-finite inputs, a
    non-finite weight a non-finite map), so they fail before any work."""
    if any(isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, tuple) else (value,))):
        shown = short_repr(value if given is None else given)
        raise SalientError(f"parameter {key!r} of method {method} must be finite, got {shown}")
    return value


def _auto(s: str) -> Any:
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    return s
