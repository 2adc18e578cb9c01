"""Networks, losses, optimizers and LR schedulers built from plain data through a closed registry.

A spec is a mapping with a `_target_` name and keyword arguments, as in the `conf/` YAMLs. It is never
passed to `hydra.utils.instantiate` and never resolved: the name must be one of this package's
networks or losses (or a class registered by the calling code), a torch optimizer or an LR scheduler of
torch or `medseg.schedulers`, and every argument must be plain data of the type the constructor
declares. That is what keeps a checkpoint's hyper-parameters data.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

PLAIN = (str, int, float, bool, type(None))
INTERPOLATION = "${"

# name -> (module, attribute); imported on first use so that the registry itself stays a leaf.
_NAMED: dict[str, tuple[str, str]] = {
    "medseg.models.PSPNet": ("medseg.models.pspnet", "PSPNet"),
    "medseg.models.pspnet.PSPNet": ("medseg.models.pspnet", "PSPNet"),
    "medseg.losses.DiceLoss": ("medseg.losses", "DiceLoss"),
    "medseg.losses.FocalLoss": ("medseg.losses", "FocalLoss"),
    "medseg.losses.HybridLoss": ("medseg.losses", "HybridLoss"),
}
# module -> base class: any public subclass of it defined there is allowed (looked up, never called to check).
_BY_TYPE: dict[str, tuple[str, str]] = {
    "torch.optim": ("torch.optim", "Optimizer"),
    "torch.optim.lr_scheduler": ("torch.optim.lr_scheduler", "LRScheduler"),
    "medseg.schedulers": ("torch.optim.lr_scheduler", "LRScheduler"),
}
_REGISTERED: dict[str, Callable] = {}


class UnsafeSpec(ValueError):
    """A spec names code outside the registry, or holds something that is not plain data."""


def register(name: str, constructor: Callable) -> None:
    """Let specs name CONSTRUCTOR as NAME (for the caller's own networks, e.g. a benchmark's reference)."""
    _REGISTERED[name] = constructor


def lookup(name: object) -> Callable | None:
    """The constructor a `_target_` NAME stands for, or None when it is not allowed."""
    if not isinstance(name, str):
        return None
    if name in _REGISTERED:
        return _REGISTERED[name]
    import importlib

    if name in _NAMED:
        module, attr = _NAMED[name]
        return getattr(importlib.import_module(module), attr)
    module_name, _, attr = name.rpartition(".")
    if module_name not in _BY_TYPE or attr.startswith("_"):
        return None
    base_module, base_name = _BY_TYPE[module_name]
    base = getattr(importlib.import_module(base_module), base_name)
    value = inspect.getattr_static(importlib.import_module(module_name), attr, None)
    return value if inspect.isclass(value) and issubclass(value, base) else None


def check_plain(tree: Any, where: str) -> None:
    """Raise UnsafeSpec unless TREE is plain data (str, numbers, bool, None, lists and str- or int-keyed dicts
    of them, e.g. `data.mask_mapping`)
    with no OmegaConf interpolation and only registered `_target_` names."""
    if isinstance(tree, str):
        if INTERPOLATION in tree:
            raise UnsafeSpec(f"refused: {where} holds an interpolation ({tree[:60]!r}); checkpoints are data")
    elif isinstance(tree, Mapping):
        if "_target_" in tree and lookup(tree["_target_"]) is None:
            raise UnsafeSpec(
                f"refused: {where} names {tree['_target_']!r}, which is not a medseg network, loss, "
                "torch optimizer or LR scheduler"
            )
        for key, value in tree.items():
            if not isinstance(key, str | int) or isinstance(key, bool):
                raise UnsafeSpec(f"refused: {where} has a key of type {type(key).__name__}")
            check_plain(str(key), where)
            check_plain(value, f"{where}.{key}" if where else str(key))
    elif isinstance(tree, list | tuple):
        for i, value in enumerate(tree):
            check_plain(value, f"{where}[{i}]")
    elif not isinstance(tree, PLAIN):
        raise UnsafeSpec(f"refused: {where} holds a {type(tree).__name__}, not plain data")


def build(spec: Mapping, where: str, **given: Any) -> Any:
    """The object SPEC describes, with GIVEN arguments added (a functools.partial when `_partial_` is set).

    Raises UnsafeSpec for names outside the registry and ValueError naming WHERE.KEY for a bad argument.
    """
    check_plain(dict(spec), where)
    constructor = lookup(spec.get("_target_"))
    if constructor is None:
        raise UnsafeSpec(f"refused: {where} has no allowed _target_ (got {spec.get('_target_')!r})")
    arguments = {k: v for k, v in spec.items() if k not in ("_target_", "_partial_", "_convert_", "_recursive_")}
    nested = [k for k, v in arguments.items() if isinstance(v, Mapping) and "_target_" in v]
    if nested:
        raise UnsafeSpec(f"refused: {where}.{nested[0]}: an argument may not name a class")
    check_arguments(constructor, arguments, where)
    if spec.get("_partial_"):
        return functools.partial(constructor, **arguments, **given)
    try:
        return constructor(**arguments, **given)
    except (ValueError, TypeError) as exc:
        text = " ".join(str(exc).split())
        key = text.split(":", 1)[0]
        raise ValueError(f"{where}.{text}" if key in arguments else f"{where}: {text}") from None


def check_arguments(constructor: Callable, arguments: Mapping[str, Any], where: str) -> None:
    """Raise ValueError naming WHERE.KEY for an argument CONSTRUCTOR does not take or of the wrong type."""
    target = constructor.__init__ if inspect.isclass(constructor) else constructor  # type: ignore[misc]
    parameters = inspect.signature(target).parameters
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # annotations that do not evaluate here: names are still checked
        hints = {}
    for key, value in arguments.items():
        if key not in parameters and not open_ended:
            raise ValueError(f"{where}.{key}: not an argument of {getattr(constructor, '__name__', constructor)}")
        if key in hints and not matches(value, hints[key]):
            raise ValueError(f"{where}.{key}: expected {_describe(hints[key])}, got {value!r}")


def matches(value: Any, annotation: Any) -> bool:
    """Whether plain VALUE fits a type ANNOTATION (unions, optionals, numbers, strings, sequences, mappings)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if annotation is type(None) or annotation is None:
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    container = origin or annotation
    if not inspect.isclass(container):
        return True
    if issubclass(container, Mapping):
        return isinstance(value, Mapping)
    if issubclass(container, Sequence) and not issubclass(container, str):
        if not isinstance(value, list | tuple):
            return False
        if container is tuple and args and args[-1] is not Ellipsis and len(args) == len(value):
            return all(matches(v, a) for v, a in zip(value, args, strict=True))
        item = args[0] if args and (container is not tuple or args[-1] is Ellipsis) else Any
        return all(matches(v, item) for v in value)
    return isinstance(value, container)


def _describe(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
