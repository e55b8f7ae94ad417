"""Model registry: names → model classes and named config presets.

A model file registers its family once, at the bottom, next to its presets (gpt-fast ``ModelArgs.from_name``,
LlamaGen ``GPT_models``)::

    @dataclass
    class FooConfig(PresetMixin):          # PresetMixin adds FooConfig.from_name("foo-tiny")
        dim: int = 64

    class Foo(nn.Module, PretrainedMixin):  # PretrainedMixin (vistok.hub) adds save/from_pretrained
        config_class = FooConfig
        def __init__(self, config: FooConfig): ...

    register_model("foo", Foo, presets={"foo-tiny": FooConfig(dim=8), "foo-base": {"dim": 256}})

Then ``create_model("foo-tiny", dim=16)`` builds ``Foo(FooConfig(dim=16))``, ``list_models("foo*")`` lists the presets
and ``get_model_class("foo")`` is what :func:`vistok.hub.from_pretrained` uses to rebuild a saved model.

The ``name`` given to :func:`register_model` is the family's ``model_type`` (stored in ``config.json``); preset names
are what users type. Built-in families register themselves when their module is imported; the first lookup that
misses imports every module under :data:`BUILTIN_PACKAGES`, so ``create_model("magvit2-tiny")`` works without importing
the tokenizer module first.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import fnmatch
import importlib
import importlib.util
import pkgutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "BUILTIN_PACKAGES",
    "ConfigError",
    "PresetMixin",
    "UnknownModelError",
    "check_config_keys",
    "create_model",
    "get_config",
    "get_model_class",
    "list_model_types",
    "list_models",
    "register_model",
    "register_preset",
]

#: Packages whose modules are imported (once) the first time a lookup misses, so built-in families self-register.
BUILTIN_PACKAGES: tuple[str, ...] = ("vistok.quantizers", "vistok.tokenizers", "vistok.models")

T = TypeVar("T", bound=type)


class ConfigError(ValueError):
    """A config (or an override, or a ``config.json``) has keys or values its dataclass does not accept."""


class UnknownModelError(LookupError):
    """No model family or preset is registered under the name; the message lists close matches."""


@dataclass(frozen=True)
class _Family:
    """A registered model family: its ``model_type`` name, model class and config dataclass."""

    name: str
    cls: type
    config_cls: type


@dataclass(frozen=True)
class _Preset:
    """A named config of one family."""

    name: str
    model_type: str
    config: Any


_FAMILIES: dict[str, _Family] = {}
_PRESETS: dict[str, _Preset] = {}
_builtins_loaded = False


# ---------------------------------------------------------------------------------------------------------------------
# Config helpers shared with vistok.hub
# ---------------------------------------------------------------------------------------------------------------------


def _init_fields(config_cls: type) -> list[dataclasses.Field]:
    """The fields a config dataclass takes in ``__init__`` (derived ``init=False`` fields are recomputed)."""
    return [f for f in dataclasses.fields(config_cls) if f.init]


def check_config_keys(config_cls: type, keys: Iterable[str], what: str = "config key", where: str = "") -> None:
    """Raise :class:`ConfigError` naming the ``keys`` that are not ``__init__`` fields of ``config_cls``."""
    valid = [f.name for f in _init_fields(config_cls)]
    unknown = sorted(set(keys) - set(valid))
    if unknown:
        hints = [
            f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, valid, n=1)) else repr(k)
            for k in unknown
        ]
        plural = "s" if len(unknown) > 1 else ""
        place = f" in {where}" if where else ""
        raise ConfigError(
            f"unknown {what}{plural} for {config_cls.__name__}{place}: {', '.join(hints)}; "
            f"valid fields: {', '.join(valid)}"
        )


def _make_config(config_cls: type, config: Any, where: str) -> Any:
    """Turn a preset given as a config instance or a dict of kwargs into a config instance of ``config_cls``."""
    if isinstance(config, Mapping):
        check_config_keys(config_cls, config, what="field", where=f"preset {where!r}")
        return config_cls(**config)
    if not isinstance(config, config_cls):
        raise ConfigError(f"preset {where!r}: expected a {config_cls.__name__} or a dict, got {type(config).__name__}")
    return config


def _apply_overrides(config: Any, overrides: Mapping[str, Any]) -> Any:
    """A deep copy of ``config`` with ``overrides`` applied (``__post_init__`` runs again)."""
    check_config_keys(type(config), overrides, what="override")
    return dataclasses.replace(copy.deepcopy(config), **overrides)


def _close(name: str, choices: Iterable[str]) -> str:
    """' (did you mean ...?)' for the closest names, or ''."""
    matches = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(map(repr, matches))}?)" if matches else ""


# ---------------------------------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------------------------------


def _same_class(a: type, b: type) -> bool:
    """True for the same class, or the same class re-defined by a module reload."""
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def _register_family(name: str, cls: type, config_cls: type | None) -> _Family:
    config_cls = config_cls or getattr(cls, "config_class", None)
    if config_cls is None or not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"register_model({name!r}): {cls.__name__} needs a dataclass config (set config_class)")
    declared = cls.__dict__.get("model_type")
    if declared is not None and declared != name:
        raise ValueError(f"register_model({name!r}): {cls.__name__}.model_type is {declared!r}")
    old = _FAMILIES.get(name)
    if old is not None and not _same_class(old.cls, cls):
        raise ValueError(f"model type {name!r} is already registered to {old.cls.__module__}.{old.cls.__qualname__}")
    cls.model_type = name
    cls.config_class = config_cls
    family = _Family(name, cls, config_cls)
    _FAMILIES[name] = family
    return family


def register_preset(name: str, model_type: str | type, config: Any = None, **kwargs: Any) -> None:
    """Register a named preset of a registered family.

    ``config`` is a config instance or a dict of config kwargs (``**kwargs`` work too); unknown keys raise
    :class:`ConfigError` here, at import time, rather than when someone first uses the preset.
    """
    family = _FAMILIES.get(model_type if isinstance(model_type, str) else getattr(model_type, "model_type", ""))
    if family is None:
        raise UnknownModelError(f"register_preset({name!r}): model type {model_type!r} is not registered")
    if config is not None and kwargs:
        raise TypeError("register_preset: give either config or **kwargs, not both")
    old = _PRESETS.get(name)
    if old is not None and old.model_type != family.name:
        raise ValueError(f"preset {name!r} is already registered for model type {old.model_type!r}")
    cfg = _make_config(family.config_cls, kwargs if config is None else config, name)
    _PRESETS[name] = _Preset(name, family.name, cfg)


def register_model(
    name: str,
    cls: T | None = None,
    *,
    config_cls: type | None = None,
    presets: Mapping[str, Any] | None = None,
) -> T | Callable[[T], T]:
    """Register model class ``cls`` as family ``name`` (its ``model_type``), with optional named ``presets``.

    Use as a call, ``register_model("foo", Foo, presets={...})``, or as a class decorator,
    ``@register_model("foo", presets={...})``. ``config_cls`` defaults to ``cls.config_class``; registration sets
    ``cls.model_type = name`` and ``cls.config_class``. Preset values are config instances or dicts of kwargs.
    Registering the same class again (e.g. after a module reload) replaces the entry; another class under the same
    name raises.
    """

    def decorate(model_cls: T) -> T:
        family = _register_family(name, model_cls, config_cls)
        for preset_name, cfg in (presets or {}).items():
            register_preset(preset_name, family.name, cfg)
        return model_cls

    return decorate if cls is None else decorate(cls)


# ---------------------------------------------------------------------------------------------------------------------
# Lookup
# ---------------------------------------------------------------------------------------------------------------------


def _load_builtins() -> None:
    """Import every module under :data:`BUILTIN_PACKAGES` once, so built-in families register themselves."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True  # set first: a module that looks something up while importing must not recurse
    for package_name in BUILTIN_PACKAGES:
        if importlib.util.find_spec(package_name) is None:
            continue
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(getattr(package, "__path__", []), prefix=f"{package_name}."):
            if not info.name.rsplit(".", 1)[-1].startswith("_"):
                importlib.import_module(info.name)


def _lookup(table: Mapping[str, Any], name: str) -> Any:
    """``table[name]``, importing the built-in model modules first when the name is not there yet."""
    if name not in table:
        _load_builtins()
    return table.get(name)


def get_model_class(model_type: str) -> type:
    """The model class registered under ``model_type`` (the name stored in ``config.json``)."""
    family = _lookup(_FAMILIES, model_type)
    if family is None:
        known = ", ".join(sorted(_FAMILIES)) or "none"
        raise UnknownModelError(
            f"unknown model type {model_type!r}{_close(model_type, _FAMILIES)}; registered: {known}"
        )
    return family.cls


def _unknown_name(name: str) -> UnknownModelError:
    names = sorted(_PRESETS) + sorted(_FAMILIES)
    return UnknownModelError(
        f"unknown model {name!r}{_close(name, names)}; see vistok.list_models() ({len(_PRESETS)} presets registered)"
    )


def get_config(name: str, **overrides: Any) -> Any:
    """The config of preset ``name`` (or the default config of family ``name``) with ``overrides`` applied.

    Returns a fresh deep copy: changing it never changes the registered preset.
    """
    preset = _lookup(_PRESETS, name)
    if preset is not None:
        return _apply_overrides(preset.config, overrides)
    family = _FAMILIES.get(name)
    if family is None:
        raise _unknown_name(name)
    check_config_keys(family.config_cls, overrides, what="override")
    try:
        return family.config_cls(**overrides)
    except TypeError as e:
        raise ConfigError(f"model type {name!r} has no default config ({e}); use one of its presets") from e


def _family_of(name: str) -> _Family:
    preset = _PRESETS.get(name)
    return _FAMILIES[preset.model_type] if preset is not None else _FAMILIES[name]


def parse_override(text: str) -> tuple[str, Any]:
    """A command-line ``KEY=VALUE`` config override; VALUE is parsed as JSON when it is valid JSON (numbers, lists,
    true/false, null), else kept as a string. For ``--model-arg`` options; raises ``argparse.ArgumentTypeError``."""
    import argparse
    import json

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def create_model(name: str, **overrides: Any) -> Any:
    """Build the model of preset (or family) ``name`` with config ``overrides``: ``create_model("foo-tiny", dim=16)``.

    Unknown names raise :class:`UnknownModelError` with close matches; unknown override keys raise
    :class:`ConfigError` listing the valid fields. The model is randomly initialised (load weights with
    :func:`vistok.hub.from_pretrained`).
    """
    config = get_config(name, **overrides)
    return _family_of(name).cls(config)


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of all registered presets, optionally filtered with an fnmatch ``pattern`` (``"magvit2-*"``)."""
    _load_builtins()
    names = sorted(_PRESETS)
    return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def list_model_types() -> list[str]:
    """Sorted names of all registered model families (the ``model_type`` values ``config.json`` may hold)."""
    _load_builtins()
    return sorted(_FAMILIES)


# ---------------------------------------------------------------------------------------------------------------------
# Config mixin
# ---------------------------------------------------------------------------------------------------------------------


class PresetMixin:
    """Gives a config dataclass ``Config.from_name(preset, **overrides)`` and ``Config.preset_names()``.

    Presets are the ones registered (through :func:`register_model`) with this config class.
    """

    @classmethod
    def preset_names(cls) -> list[str]:
        """Sorted names of the registered presets whose config is a ``cls``."""
        _load_builtins()
        return sorted(n for n, p in _PRESETS.items() if isinstance(p.config, cls))

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> Any:
        """A copy of preset ``name``'s config with ``overrides`` applied."""
        preset = _lookup(_PRESETS, name)
        if preset is None or not isinstance(preset.config, cls):
            valid = cls.preset_names()
            raise UnknownModelError(
                f"no {cls.__name__} preset named {name!r}{_close(name, valid)}; presets: {', '.join(valid) or 'none'}"
            )
        return _apply_overrides(preset.config, overrides)
