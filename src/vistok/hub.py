"""Release format: a folder with ``config.json`` + ``model.safetensors`` (timm ``_hub.py``, huggingface_hub's mixin).

``config.json`` is plain JSON: ``{"model_type": ..., "vistok_version": ..., <config fields>}``. Tuples are stored as
lists, nested dataclasses as objects, enums as their values, ``torch.dtype`` as its name; on load the config dataclass's
field types turn them back (a ``tuple[int, int]`` field comes back as a tuple). Weights go through ``safetensors``,
never pickle; tied (shared) tensors are stored once; non-persistent buffers are not stored.

A save is atomic: files are written into a temporary sibling folder which then replaces the target, so an interrupted
save leaves either the old folder or none, never a half-written one.

``from_pretrained`` takes a local folder, or a Hugging Face Hub id (``"org/name"``) when ``huggingface_hub`` is
installed (``pip install 'vistok[hub]'``). ``local_files_only=True`` or ``HF_HUB_OFFLINE=1`` only uses the local cache.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import re
import shutil
import types
import typing
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import Any, ClassVar, Literal, TypeVar, Union

import torch
from torch import nn

from vistok._optional import MissingDependencyError, require
from vistok.registry import ConfigError, check_config_keys, get_model_class

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "PretrainedMixin",
    "WeightsError",
    "config_from_dict",
    "config_to_dict",
    "from_pretrained",
    "load_config",
    "load_weights",
    "resolve_pretrained",
    "save_pretrained",
    "save_weights",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_RESERVED_KEYS = ("model_type", "vistok_version")
_MAX_LISTED = 20

M = TypeVar("M", bound=nn.Module)


class WeightsError(ValueError):
    """Weights that do not fit the model (missing/unexpected keys, shape mismatches) or an unreadable file."""

    def __init__(self, message: str, missing: Iterable = (), unexpected: Iterable = (), mismatched: Iterable = ()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)


# ---------------------------------------------------------------------------------------------------------------------
# Config ⇄ plain JSON
# ---------------------------------------------------------------------------------------------------------------------


def _to_json(value: Any, where: str) -> Any:
    """``value`` as plain JSON data (dict / list / str / number / bool / None)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, enum.Enum):
        return _to_json(value.value, where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _to_json(getattr(value, f.name), f"{where}.{f.name}") for f in dataclasses.fields(value) if f.init
        }
    if isinstance(value, list | tuple):
        return [_to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise ConfigError(f"config field {where}: dict keys must be strings to be stored in {CONFIG_NAME}")
        return {k: _to_json(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, PurePath):
        return str(value)
    raise ConfigError(f"config field {where}: a {type(value).__name__} cannot be stored in {CONFIG_NAME}")


def config_to_dict(config: Any) -> dict[str, Any]:
    """The ``__init__`` fields of config dataclass ``config`` as plain JSON data (derived fields are left out)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"expected a dataclass config instance, got {type(config).__name__}")
    return _to_json(config, type(config).__name__)


def _field_types(config_cls: type) -> dict[str, Any]:
    """Resolved field annotations of a dataclass; unresolvable ones become ``Any`` (values then pass unchanged)."""
    try:
        return typing.get_type_hints(config_cls)
    except (NameError, TypeError):
        return {f.name: Any if isinstance(f.type, str) else f.type for f in dataclasses.fields(config_cls)}


def _bad(where: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"config field {where}: expected {expected}, got {type(value).__name__} {value!r}")


def _convert_union(value: Any, args: tuple, where: str, strict: bool) -> Any:
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is not type(None):
            try:
                return _convert(value, arg, where, strict)
            except ConfigError:
                continue
    names = ["None" if a is type(None) else getattr(a, "__name__", str(a)) for a in args]
    raise _bad(where, " or ".join(names), value)


def _convert_sequence(value: Any, origin: Any, args: tuple, where: str, strict: bool) -> Any:
    if not isinstance(value, list | tuple):
        raise _bad(where, "a list", value)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise _bad(where, f"{len(args)} items", value)
        return tuple(_convert(v, a, f"{where}[{i}]", strict) for i, (v, a) in enumerate(zip(value, args)))
    item = args[0] if args else Any
    items = [_convert(v, item, f"{where}[{i}]", strict) for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _convert_scalar(value: Any, tp: type, where: str) -> Any:
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _bad(where, "float", value)
    if tp in (int, bool, str) and type(value) is not tp:
        raise _bad(where, tp.__name__, value)
    if issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise _bad(where, f"one of {[m.value for m in tp]}", value) from None
    if issubclass(tp, PurePath) and isinstance(value, str | PurePath):
        return tp(value)
    return value


def _convert(value: Any, tp: Any, where: str, strict: bool) -> Any:
    """Turn JSON data ``value`` back into a value of annotation ``tp`` (unknown annotations pass ``value`` through)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if origin in (Union, types.UnionType):
        return _convert_union(value, args, where, strict)
    if origin is Literal:
        if value not in args:
            raise _bad(where, f"one of {list(args)}", value)
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):  # an override given as a config object
            return value
        if not isinstance(value, Mapping):
            raise _bad(where, f"an object for {tp.__name__}", value)
        return _from_dict(tp, value, where, strict)
    if origin in (tuple, list) or tp in (tuple, list):
        return _convert_sequence(value, origin or tp, args, where, strict)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise _bad(where, "an object", value)
        item = args[1] if len(args) == 2 else Any
        return {k: _convert(v, item, f"{where}.{k}", strict) for k, v in value.items()}
    if tp is torch.dtype:
        if isinstance(value, torch.dtype):
            return value
        dtype = getattr(torch, value, None) if isinstance(value, str) else None
        if not isinstance(dtype, torch.dtype):
            raise _bad(where, "a torch dtype name", value)
        return dtype
    return _convert_scalar(value, tp, where) if isinstance(tp, type) else value


def _from_dict(config_cls: type, data: Mapping[str, Any], where: str, strict: bool) -> Any:
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    derived = {name for name, f in fields.items() if not f.init}
    data = {k: v for k, v in data.items() if k not in derived}  # recomputed by __post_init__
    unknown = sorted(set(data) - set(fields))
    if unknown:
        if strict:
            check_config_keys(config_cls, unknown, where="" if where == config_cls.__name__ else where)
        warnings.warn(f"{where}: ignoring unknown config keys {unknown} (strict=False)", stacklevel=4)
    types_ = _field_types(config_cls)
    kwargs = {k: _convert(v, types_.get(k, Any), f"{where}.{k}", strict) for k, v in data.items() if k in fields}
    missing = [n for n, f in fields.items() if f.init and n not in kwargs and _no_default(f)]
    if missing:
        raise ConfigError(f"{where}: missing required config field(s) {missing} (they have no default)")
    return config_cls(**kwargs)


def _no_default(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def config_from_dict(config_cls: type, data: Mapping[str, Any], *, strict: bool = True) -> Any:
    """Rebuild a ``config_cls`` instance from :func:`config_to_dict` data, using the dataclass's field types.

    Missing keys take the dataclass defaults. Unknown keys raise :class:`ConfigError` naming them, or with
    ``strict=False`` are ignored with a warning. Values of the wrong type raise :class:`ConfigError`.
    """
    return _from_dict(config_cls, data, config_cls.__name__, strict)


# ---------------------------------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------------------------------


def save_weights(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write ``model.state_dict()`` to a safetensors file; tied tensors are stored once (``safetensors.save_model``)."""
    import safetensors.torch

    safetensors.torch.save_model(model, str(path), metadata={"format": "pt", **(metadata or {})})


def _alias_groups(state: Mapping[str, torch.Tensor]) -> dict[str, tuple]:
    """For each state-dict key, an identity of the memory it views: tied keys share one identity."""
    ids = {}
    for k, t in state.items():
        if t.numel() == 0 or t.device.type == "meta":
            ids[k] = ("own", k)
        else:
            ids[k] = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
    return ids


def _listing(keys: list[str]) -> str:
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def _read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as e:
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from e


def _check_keys(model: nn.Module, path: Path, file_shapes: dict, strict: bool) -> list[str]:
    """Compare the file's keys and shapes with the model's; returns the keys to load. Raises :class:`WeightsError`."""
    state = model.state_dict()
    alias = _alias_groups(state)
    present = {alias[k] for k in state if k in file_shapes}
    missing = sorted(k for k in state if k not in file_shapes and alias[k] not in present)
    unexpected = sorted(k for k in file_shapes if k not in state)
    mismatched = sorted(
        (k, tuple(state[k].shape), file_shapes[k])
        for k in file_shapes
        if k in state and tuple(state[k].shape) != file_shapes[k]
    )
    problems = []
    if mismatched:
        rows = [f"    {k}: expected {list(e)}, got {list(g)}" for k, e, g in mismatched[:_MAX_LISTED]]
        problems.append("  shape mismatch (model vs file):\n" + "\n".join(rows))
    if strict and missing:
        problems.append(f"  missing keys (in the model, not in the file): {_listing(missing)}")
    if strict and unexpected:
        problems.append(f"  unexpected keys (in the file, not in the model): {_listing(unexpected)}")
    if problems:
        raise WeightsError(
            f"cannot load {path} into {type(model).__name__}:\n" + "\n".join(problems), missing, unexpected, mismatched
        )
    if missing or unexpected:
        warnings.warn(
            f"loading {path} with strict=False: missing keys {missing or 'none'}, "
            f"unexpected keys {unexpected or 'none'}",
            stacklevel=3,
        )
    return [k for k in file_shapes if k in state]


def load_weights(
    model: M, path: str | os.PathLike, *, strict: bool = True, map_location: str | torch.device | None = None
) -> M:
    """Load a safetensors file into ``model`` in place (values are cast to each parameter's dtype).

    Raises :class:`WeightsError` listing shape mismatches (expected vs got), and with ``strict`` missing and
    unexpected keys; tied parameters stored once count as present. ``map_location`` is where tensors are read to
    (default: the model's first parameter's device).
    """
    from safetensors import safe_open

    path = Path(path)
    keys = _check_keys(model, path, _read_shapes(path), strict)
    device = torch.device(map_location) if map_location is not None else _model_device(model)
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        tensors = {k: f.get_tensor(k) for k in keys}
    model.load_state_dict(tensors, strict=False)
    return model


def _model_device(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None:
        return None
    resolved = dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype such as torch.bfloat16 or 'float16', got {dtype!r}")
    return resolved


# ---------------------------------------------------------------------------------------------------------------------
# Atomic save
# ---------------------------------------------------------------------------------------------------------------------


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file or a folder) to disk where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. folders on Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def _install(tmp: Path, target: Path) -> None:
    """Move the finished ``tmp`` folder's files to ``target``.

    A missing target, or one holding only our own files, is replaced as a whole folder (rename). A target that also
    holds other files (a README, say), is a symlink, or holds the working directory keeps its identity and other
    files: each of our files replaces its namesake atomically.
    """
    if not target.exists():
        os.replace(tmp, target)
        return
    ours = {p.name for p in tmp.iterdir()}
    pinned = target.is_symlink() or Path.cwd().is_relative_to(target.resolve())
    if not pinned and {p.name for p in target.iterdir()} <= ours:
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    for name in sorted(ours, key=lambda n: n == CONFIG_NAME):  # config last: it names what the weights are
        os.replace(tmp / name, target / name)
    tmp.rmdir()


@contextmanager
def _atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder of ``target``; on success it replaces ``target``, on any error it is removed."""
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        for p in tmp.iterdir():
            _fsync(p)
        _install(tmp, target)
        _fsync(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------------
# save / load a release folder
# ---------------------------------------------------------------------------------------------------------------------


def _model_type(model: nn.Module) -> str:
    model_type = getattr(type(model), "model_type", None)
    if not isinstance(model_type, str):
        raise ConfigError(
            f"{type(model).__name__} has no model_type: register it with vistok.registry.register_model(name, cls)"
        )
    return model_type


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike) -> Path:
    """Write ``model`` as ``save_directory/config.json`` + ``model.safetensors`` (atomically); returns the folder.

    ``model`` needs a dataclass ``model.config`` and a class attribute ``model_type`` (set by ``register_model``).
    """
    import vistok

    config = getattr(model, "config", None)
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"{type(model).__name__}.config must be a dataclass instance to save it")
    fields = config_to_dict(config)
    clash = [k for k in _RESERVED_KEYS if k in fields]
    if clash:
        raise ConfigError(f"{type(config).__name__} has fields named {clash}, which {CONFIG_NAME} reserves")
    data = {"model_type": _model_type(model), "vistok_version": vistok.__version__, **fields}
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    target = Path(save_directory).expanduser().absolute()
    with _atomic_dir(target) as tmp:
        save_weights(model, tmp / WEIGHTS_NAME, metadata={"vistok_version": vistok.__version__})
        (tmp / CONFIG_NAME).write_text(text, encoding="utf-8")
    return target


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _offline(local_files_only: bool) -> bool:
    return local_files_only or os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def resolve_pretrained(
    path_or_id: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> Path:
    """The local folder for ``path_or_id``: an existing folder as is, or a Hub id fetched by ``huggingface_hub``."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{path} is a file; from_pretrained expects the folder holding {CONFIG_NAME}")
    name = str(path_or_id)
    if not _HUB_ID.match(name):
        raise FileNotFoundError(f"{name} does not exist")
    try:
        hub = require("huggingface_hub", "hub", "loading models from the Hugging Face Hub")
    except MissingDependencyError as e:
        raise MissingDependencyError(
            f"{name!r} does not exist locally, and Hub ids such as 'org/name' need huggingface_hub: "
            "pip install 'vistok[hub]'"
        ) from e
    offline = _offline(local_files_only)
    try:
        folder = hub.snapshot_download(
            name,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=offline,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME],
        )
    except Exception as e:
        where = "in the local Hugging Face cache (offline)" if offline else "on the Hugging Face Hub"
        raise FileNotFoundError(f"{name!r} is not a local folder and was not found {where}: {e}") from e
    return Path(folder)


def _read_config_json(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    if not path.is_file():
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME} (found: {found})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_config(folder: str | os.PathLike, config_cls: type | None = None, *, strict: bool = True) -> Any:
    """The config dataclass saved in local ``folder``; ``config_cls`` defaults to the registered ``model_type``'s."""
    data = _read_config_json(Path(folder))
    if config_cls is None:
        config_cls = get_model_class(_saved_model_type(data, Path(folder))).config_class
    return _config_from_file(config_cls, _fields_only(data), Path(folder) / CONFIG_NAME, strict)


def _config_from_file(config_cls: type, fields: Mapping[str, Any], source: str | Path, strict: bool) -> Any:
    """:func:`config_from_dict`, with errors and warnings that name the file the fields came from."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            config = config_from_dict(config_cls, fields, strict=strict)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from e
    for w in caught:
        warnings.warn(f"{source}: {w.message}", w.category, stacklevel=4)
    return config


def _saved_model_type(data: Mapping[str, Any], folder: Path) -> str:
    model_type = data.get("model_type")
    if not isinstance(model_type, str):
        raise ConfigError(f"{folder / CONFIG_NAME} has no 'model_type'; load it with YourModel.from_pretrained(...)")
    return model_type


def _fields_only(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in _RESERVED_KEYS}


def _weights_path(folder: Path) -> Path:
    path = folder / WEIGHTS_NAME
    if path.is_file():
        return path
    pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt*")]
    hint = f"; found {pickled}, but vistok never loads pickle files" if pickled else ""
    raise FileNotFoundError(f"{folder} has no {WEIGHTS_NAME}{hint}")


def _build(
    cls: type,
    folder: Path,
    data: Mapping[str, Any],
    *,
    map_location: str | torch.device,
    strict: bool,
    dtype: torch.dtype | str | None,
    overrides: Mapping[str, Any],
) -> nn.Module:
    """Make ``cls`` from ``config.json`` data and overrides, cast it, load its weights, and put it in eval mode."""
    config_cls = getattr(cls, "config_class", None)
    if config_cls is None:
        raise TypeError(f"{cls.__name__} has no config_class; set it or register the model")
    check_config_keys(config_cls, overrides, what="override")
    fields = {**_fields_only(data), **overrides}
    source = f"{folder / CONFIG_NAME}" + (" with overrides" if overrides else "")
    config = _config_from_file(config_cls, fields, source, strict)
    model = cls(config)
    model.to(device=torch.device(map_location), dtype=_as_dtype(dtype))
    load_weights(model, _weights_path(folder), strict=strict, map_location=map_location)
    return model.eval()


class PretrainedMixin:
    """Adds ``model.save_pretrained(dir)`` and ``Model.from_pretrained(path_or_id, ...)`` to an ``nn.Module``.

    The model holds its config dataclass as ``self.config`` and is built as ``Model(config)``; the class sets
    ``config_class`` and gets ``model_type`` from :func:`vistok.registry.register_model`.
    """

    config_class: ClassVar[type]
    model_type: ClassVar[str]

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` to ``save_directory`` atomically; returns the folder."""
        return save_pretrained(self, save_directory)

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        *,
        map_location: str | torch.device = "cpu",
        strict: bool = True,
        dtype: torch.dtype | str | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        **config_overrides: Any,
    ) -> Any:
        """Rebuild the model saved in ``path_or_id`` (a folder, or a Hub id with ``vistok[hub]``), in eval mode.

        ``config_overrides`` replace saved config fields (unknown names raise). ``strict=False`` tolerates missing and
        unexpected weight keys and unknown config keys (with a warning); shape mismatches always raise.
        ``dtype`` casts floating parameters and buffers (integer ones keep theirs); ``map_location`` is the device.
        """
        folder = resolve_pretrained(
            path_or_id, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
        )
        data = _read_config_json(folder)
        saved = data.get("model_type")
        mine = getattr(cls, "model_type", None)
        if isinstance(saved, str) and isinstance(mine, str) and saved != mine:
            raise ConfigError(f"{folder} holds a {saved!r} model, not a {mine!r} ({cls.__name__}); use from_pretrained")
        return _build(
            cls, folder, data, map_location=map_location, strict=strict, dtype=dtype, overrides=config_overrides
        )


def from_pretrained(
    path_or_id: str | os.PathLike,
    *,
    map_location: str | torch.device = "cpu",
    strict: bool = True,
    dtype: torch.dtype | str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    **config_overrides: Any,
) -> nn.Module:
    """Load any registered model from ``path_or_id``: the class comes from ``config.json``'s ``model_type``.

    Same options as :meth:`PretrainedMixin.from_pretrained`.
    """
    folder = resolve_pretrained(path_or_id, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    data = _read_config_json(folder)
    cls = get_model_class(_saved_model_type(data, folder))
    return _build(cls, folder, data, map_location=map_location, strict=strict, dtype=dtype, overrides=config_overrides)
