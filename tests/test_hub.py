"""vistok.hub: config.json + model.safetensors round trips, strictness, atomic saves, Hub ids without network."""

from __future__ import annotations

import enum
import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import safe_open
from torch import nn

import vistok
from vistok import hub, registry
from vistok._optional import MissingDependencyError
from vistok.hub import PretrainedMixin, WeightsError, config_from_dict, config_to_dict, from_pretrained
from vistok.registry import ConfigError, create_model, register_model


class Act(enum.Enum):
    GELU = "gelu"
    RELU = "relu"


@dataclass
class HeadConfig:
    hidden: int = 8
    bias: bool = True


@dataclass
class ToyConfig:
    in_dim: int = 3
    dims: tuple[int, ...] = (8, 6)
    kernel: tuple[int, int] = (3, 3)
    dropout: float = 0.0
    act: Act = Act.GELU
    name: str = "toy"
    head: HeadConfig = field(default_factory=HeadConfig)
    vocab: int = 11
    tie: bool = True
    scale: float | None = None
    extra: dict[str, list[int]] = field(default_factory=dict)
    compute_dtype: torch.dtype = torch.float32
    depth: int = field(init=False)

    def __post_init__(self):
        self.depth = len(self.dims)


class Toy(nn.Module, PretrainedMixin):
    """A tiny conv + MLP with a tied embedding/head, a persistent int buffer and a non-persistent cache."""

    config_class = ToyConfig

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        c = config
        self.conv = nn.Conv2d(c.in_dim, c.dims[0], c.kernel, padding=c.kernel[0] // 2)
        self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in zip(c.dims, (*c.dims[1:], c.head.hidden)))
        self.act = nn.GELU() if c.act is Act.GELU else nn.ReLU()
        self.embed = nn.Embedding(c.vocab, c.head.hidden)
        self.head = nn.Linear(c.head.hidden, c.vocab, bias=c.head.bias)
        if c.tie:
            self.head.weight = self.embed.weight
        self.register_buffer("steps", torch.tensor([7, 8], dtype=torch.int64))
        self.register_buffer("cache", torch.ones(4), persistent=False)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).mean(dim=(2, 3))
        for lin in self.mlp:
            h = self.act(lin(h))
        return self.head(h + self.embed(ids))


@pytest.fixture(autouse=True)
def toy_registry(monkeypatch):
    """Register the toy family for each test, and leave the registry as it was afterwards."""
    registry._load_builtins()
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    monkeypatch.setattr(registry, "_PRESETS", dict(registry._PRESETS))
    register_model("hubtoy", Toy, presets={"hubtoy-tiny": ToyConfig(), "hubtoy-wide": {"dims": (16, 12, 10)}})


def _odd_config() -> ToyConfig:
    return ToyConfig(
        dims=(5, 7, 4),
        kernel=(1, 1),
        dropout=0.25,
        act=Act.RELU,
        name="odd",
        head=HeadConfig(hidden=6, bias=False),
        scale=2.5,
        extra={"a": [1, 2]},
        compute_dtype=torch.bfloat16,
    )


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 5, 5, generator=g), torch.tensor([1, 9])


def _trained(config: ToyConfig | None = None) -> Toy:
    torch.manual_seed(1)
    model = Toy(config or _odd_config())
    with torch.no_grad():
        model.steps += 5
    return model


# ---------------------------------------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------------------------------------


def test_round_trip_is_bit_exact(tmp_path):
    model = _trained()
    out = model.save_pretrained(tmp_path / "run")
    assert out == tmp_path / "run" and sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    for loaded in (Toy.from_pretrained(out), from_pretrained(str(out))):
        assert type(loaded) is Toy and not loaded.training
        assert loaded.config == model.config
        sd, ref = loaded.state_dict(), model.state_dict()
        assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)
        assert torch.equal(loaded(*_inputs()), model.eval()(*_inputs()))


def test_config_json_is_plain_json_and_types_come_back(tmp_path):
    _trained().save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == "hubtoy" and data["vistok_version"] == vistok.__version__
    assert data["dims"] == [5, 7, 4] and data["act"] == "relu" and data["head"] == {"hidden": 6, "bias": False}
    assert data["compute_dtype"] == "bfloat16" and data["extra"] == {"a": [1, 2]} and "depth" not in data
    cfg = hub.load_config(tmp_path)
    assert isinstance(cfg.dims, tuple) and isinstance(cfg.kernel, tuple) and isinstance(cfg.head, HeadConfig)
    assert cfg.act is Act.RELU and cfg.compute_dtype is torch.bfloat16 and cfg.depth == 3
    assert cfg == _odd_config()


def test_config_dict_round_trip_and_rejects_unstorable_values():
    cfg = _odd_config()
    assert config_from_dict(ToyConfig, json.loads(json.dumps(config_to_dict(cfg)))) == cfg
    assert config_from_dict(ToyConfig, {"dropout": 1}).dropout == 1.0  # JSON ints for float fields
    assert config_from_dict(ToyConfig, {}) == ToyConfig()  # missing keys take the defaults
    with pytest.raises(ConfigError, match=r"config field ToyConfig\.extra\.f: a function cannot be stored"):
        config_to_dict(ToyConfig(extra={"f": lambda: 0}))


def test_module_level_save_and_create_model(tmp_path):
    model = create_model("hubtoy-wide", vocab=5)
    hub.save_pretrained(model, tmp_path / "m")
    loaded = from_pretrained(tmp_path / "m")
    assert loaded.config.dims == (16, 12, 10) and loaded.config.vocab == 5
    assert torch.equal(loaded.conv.weight, model.conv.weight)


def test_tied_weights_stored_once_and_stay_tied(tmp_path):
    model = _trained()
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert len({"embed.weight", "head.weight"} & keys) == 1
    loaded = Toy.from_pretrained(tmp_path)
    assert loaded.head.weight is loaded.embed.weight
    assert torch.equal(loaded.head.weight, model.embed.weight)


def test_non_persistent_buffers_are_not_saved(tmp_path):
    model = _trained()
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        steps = f.get_tensor("steps")
    assert "cache" not in keys and steps.tolist() == [12, 13]
    assert torch.equal(Toy.from_pretrained(tmp_path).cache, torch.ones(4))


def test_dtype_and_map_location(tmp_path):
    model = _trained()
    model.save_pretrained(tmp_path)
    for dtype in (torch.bfloat16, "float16"):
        loaded = Toy.from_pretrained(tmp_path, dtype=dtype, map_location=torch.device("cpu"))
        want = torch.bfloat16 if dtype is torch.bfloat16 else torch.float16
        assert all(p.dtype == want for p in loaded.parameters())
        assert loaded.steps.dtype == torch.int64 and loaded.steps.tolist() == [12, 13]
        assert torch.equal(loaded.conv.weight, model.conv.weight.to(want))
        assert loaded.head.weight is loaded.embed.weight
    for bad in ("int8", torch.int64, "float33"):
        with pytest.raises(ValueError, match="floating torch dtype"):
            Toy.from_pretrained(tmp_path, dtype=bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_map_location_cuda(tmp_path):
    model = _trained()
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path, map_location="cuda", dtype=torch.bfloat16)
    assert {t.device.type for t in (*loaded.parameters(), *loaded.buffers())} == {"cuda"}
    assert torch.equal(loaded.conv.weight.cpu(), model.conv.weight.to(torch.bfloat16))
    assert loaded.head.weight is loaded.embed.weight


# ---------------------------------------------------------------------------------------------------------------------
# strictness and clear errors
# ---------------------------------------------------------------------------------------------------------------------


def test_shape_mismatch_lists_keys_with_expected_and_got(tmp_path):
    _trained().save_pretrained(tmp_path)
    with pytest.raises(WeightsError) as e:
        Toy.from_pretrained(tmp_path, vocab=13)
    msg = str(e.value)
    assert "shape mismatch" in msg and "expected [13, 6], got [11, 6]" in msg
    [(key, expected, got)] = e.value.mismatched  # the tied embedding/head tensor is stored (and checked) once
    assert key in {"embed.weight", "head.weight"} and (expected, got) == ((13, 6), (11, 6))
    with pytest.raises(WeightsError, match="shape mismatch"):  # strict=False forgives keys, never shapes
        Toy.from_pretrained(tmp_path, vocab=13, strict=False)


def test_missing_and_unexpected_keys(tmp_path):
    model = _trained()
    model.save_pretrained(tmp_path / "edited")
    weights = tmp_path / "edited" / "model.safetensors"
    tensors = {k: v.clone() for k, v in safetensors.torch.load_file(weights).items()}
    del tensors["conv.bias"]
    tensors["extra.weight"] = torch.zeros(2)
    safetensors.torch.save_file(tensors, weights)
    with pytest.raises(WeightsError) as e:
        Toy.from_pretrained(tmp_path / "edited")
    assert "missing keys (in the model, not in the file): conv.bias" in str(e.value)
    assert "unexpected keys (in the file, not in the model): extra.weight" in str(e.value)
    assert (e.value.missing, e.value.unexpected, e.value.mismatched) == (["conv.bias"], ["extra.weight"], [])
    with pytest.warns(UserWarning, match="strict=False"):
        loaded = Toy.from_pretrained(tmp_path / "edited", strict=False)
    assert torch.equal(loaded.conv.weight, model.conv.weight)


def test_untied_model_misses_the_tensor_stored_once(tmp_path):
    _trained().save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        stored = {"embed.weight", "head.weight"} & set(f.keys())
    with pytest.raises(WeightsError, match="missing keys") as e:
        Toy.from_pretrained(tmp_path, tie=False)
    assert set(e.value.missing) == {"embed.weight", "head.weight"} - stored


def test_unknown_and_missing_config_keys(tmp_path):
    _trained().save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    data["future_option"] = 1
    del data["dropout"]
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"config\.json: unknown config key for ToyConfig: 'future_option'"):
        Toy.from_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="ignoring unknown config keys"):
        loaded = Toy.from_pretrained(tmp_path, strict=False)
    assert loaded.config.dropout == 0.0  # the default


def test_wrong_value_types_and_bad_json(tmp_path):
    _trained().save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    for key, bad, expected in [
        ("in_dim", "3", "expected int"),
        ("kernel", [1, 1, 1], "expected 2 items"),
        ("act", "swish", r"expected one of \['gelu', 'relu'\], got str 'swish'"),
        ("head", 5, "expected an object for HeadConfig, got int 5"),
        ("scale", "big", "expected float or None"),
    ]:
        path.write_text(json.dumps({**data, key: bad}))
        with pytest.raises(ConfigError, match=f"config\\.json: config field ToyConfig\\.{key}: {expected}"):
            Toy.from_pretrained(tmp_path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON"):
        from_pretrained(tmp_path)


def test_unknown_override_and_wrong_model_type(tmp_path):
    _trained().save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"unknown override for ToyConfig: 'vocb' \(did you mean 'vocab'\?\)"):
        from_pretrained(tmp_path, vocb=3)
    assert from_pretrained(tmp_path, dropout=0.5).config.dropout == 0.5

    @dataclass
    class OtherConfig:
        n: int = 1

    class Other(nn.Module, PretrainedMixin):
        config_class = OtherConfig

    register_model("hubother", Other)
    with pytest.raises(ConfigError, match="holds a 'hubtoy' model, not a 'hubother'"):
        Other.from_pretrained(tmp_path)


def test_corrupt_or_pickled_weights_are_refused(tmp_path):
    _trained().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        from_pretrained(tmp_path)
    weights.unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(FileNotFoundError, match="never loads pickle"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no config\.json \(found: pytorch_model\.bin\)"):
        from_pretrained(tmp_path)


def test_model_without_model_type_cannot_be_saved(tmp_path):
    class Plain(nn.Module, PretrainedMixin):
        config_class = HeadConfig

        def __init__(self, config):
            super().__init__()
            self.config = config

    with pytest.raises(ConfigError, match="register_model"):
        Plain(HeadConfig()).save_pretrained(tmp_path / "x")
    assert not (tmp_path / "x").exists() and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------------
# atomic saves
# ---------------------------------------------------------------------------------------------------------------------


def _failing_writer(tensors, filename, metadata=None):
    Path(filename).write_bytes(b"half a file")
    raise OSError("disk full")


def test_interrupted_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(safetensors.torch, "save_file", _failing_writer)
    with pytest.raises(OSError, match="disk full"):
        _trained().save_pretrained(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_save_keeps_old_release(tmp_path, monkeypatch):
    target = tmp_path / "run"
    _trained().save_pretrained(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    monkeypatch.setattr(safetensors.torch, "save_file", _failing_writer)
    with pytest.raises(OSError, match="disk full"):
        Toy(ToyConfig()).save_pretrained(target)
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before


def test_resave_replaces_release_and_keeps_other_files(tmp_path):
    target = tmp_path / "run"
    _trained().save_pretrained(target)
    Toy(ToyConfig()).save_pretrained(target)
    assert Toy.from_pretrained(target).config == ToyConfig()
    (target / "README.md").write_text("notes")
    _trained().save_pretrained(target)
    assert (target / "README.md").read_text() == "notes"
    assert Toy.from_pretrained(target).config == _odd_config()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        _trained().save_pretrained(tmp_path / "file")


def test_save_into_working_directory_or_symlink(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _trained().save_pretrained(run)
    monkeypatch.chdir(run)
    Toy(ToyConfig()).save_pretrained(".")
    assert Path.cwd() == run and Path(".").resolve() == run.resolve()  # the working directory was not swapped away
    assert Toy.from_pretrained(".").config == ToyConfig()
    link = tmp_path / "link"
    link.symlink_to(run, target_is_directory=True)
    _trained().save_pretrained(link)
    assert link.is_symlink() and Toy.from_pretrained(run).config == _odd_config()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "run"]


# ---------------------------------------------------------------------------------------------------------------------
# Hub ids (never touching the network)
# ---------------------------------------------------------------------------------------------------------------------


def test_hub_id_without_huggingface_hub_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes the import fail
    with pytest.raises(MissingDependencyError) as e:
        from_pretrained("some-org/some-model")
    assert "'some-org/some-model' does not exist locally" in str(e.value)
    assert "pip install 'vistok[hub]'" in str(e.value)


def test_missing_local_path_is_a_plain_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_pretrained(tmp_path / "nothing" / "here")
    (tmp_path / "f.json").write_text("{}")
    with pytest.raises(NotADirectoryError, match="expects the folder"):
        from_pretrained(tmp_path / "f.json")


@pytest.mark.parametrize("env, flag, offline", [("", False, False), ("1", False, True), ("", True, True)])
def test_hub_id_goes_through_snapshot_download(tmp_path, monkeypatch, env, flag, offline):
    _trained().save_pretrained(tmp_path / "snap")
    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tmp_path / "snap")

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    monkeypatch.setenv("HF_HUB_OFFLINE", env)
    model = from_pretrained("org/toy", revision="v1", local_files_only=flag)
    assert model.config == _odd_config()
    [(repo_id, kwargs)] = calls
    assert repo_id == "org/toy" and kwargs["revision"] == "v1" and kwargs["local_files_only"] is offline
    assert set(kwargs["allow_patterns"]) == {"config.json", "model.safetensors"}


def test_hub_lookup_failure_is_reported(monkeypatch):
    def snapshot_download(repo_id, **kwargs):
        raise RuntimeError("not in cache")

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"not a local folder and was not found in the local .*not in cache"):
        from_pretrained("org/missing")
