"""vistok.registry: families, presets, create_model, list_models, Config.from_name, built-in discovery."""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass, field

import pytest
from torch import nn

from vistok import registry
from vistok.registry import (
    ConfigError,
    PresetMixin,
    UnknownModelError,
    create_model,
    get_config,
    get_model_class,
    list_model_types,
    list_models,
    register_model,
    register_preset,
)


@dataclass
class Inner:
    width: int = 4


@dataclass
class RegConfig(PresetMixin):
    dim: int = 8
    depth: int = 2
    kernel: tuple[int, int] = (3, 3)
    inner: Inner = field(default_factory=Inner)
    total: int = field(init=False)

    def __post_init__(self):
        self.total = self.dim * self.depth


class RegModel(nn.Module):
    config_class = RegConfig

    def __init__(self, config: RegConfig):
        super().__init__()
        self.config = config
        self.layers = nn.Sequential(*[nn.Linear(config.dim, config.dim) for _ in range(config.depth)])


@dataclass
class OtherConfig(PresetMixin):
    size: int = 3


class OtherModel(nn.Module):
    def __init__(self, config: OtherConfig):
        super().__init__()
        self.config = config


@dataclass
class NoDefaultsConfig:
    size: int


class NoDefaultsModel(nn.Module):
    config_class = NoDefaultsConfig

    def __init__(self, config):
        super().__init__()
        self.config = config


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch):
    """Each test sees the real registry plus what it registers; nothing leaks out."""
    registry._load_builtins()
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    monkeypatch.setattr(registry, "_PRESETS", dict(registry._PRESETS))


@pytest.fixture
def toys():
    register_model(
        "regtoy",
        RegModel,
        presets={"regtoy-tiny": RegConfig(dim=4, depth=1), "regtoy-small": {"dim": 16}, "regtoy-base": RegConfig()},
    )
    register_model("othertoy", OtherModel, config_cls=OtherConfig, presets={"othertoy-a": OtherConfig(size=5)})


def test_create_model_from_preset(toys):
    m = create_model("regtoy-tiny")
    assert isinstance(m, RegModel)
    assert (m.config.dim, m.config.depth, m.config.total) == (4, 1, 4)
    assert len(m.layers) == 1 and m.layers[0].weight.shape == (4, 4)
    assert RegModel.model_type == "regtoy" and get_model_class("regtoy") is RegModel


def test_dict_preset_and_overrides_rerun_post_init(toys):
    m = create_model("regtoy-small", depth=3)
    assert (m.config.dim, m.config.depth, m.config.total) == (16, 3, 48)
    assert m.layers[2].weight.shape == (16, 16)


def test_presets_are_never_mutated(toys):
    a = get_config("regtoy-tiny")
    a.inner.width = 99
    a.dim = 1234
    b = get_config("regtoy-tiny", kernel=(5, 5))
    assert (b.dim, b.inner.width, b.kernel) == (4, 4, (5, 5))
    assert get_config("regtoy-tiny").kernel == (3, 3)


def test_family_name_uses_default_config(toys):
    m = create_model("regtoy", dim=2)
    assert (m.config.dim, m.config.depth) == (2, 2)


def test_family_without_defaults_says_so():
    register_model("nodefaults", NoDefaultsModel)
    with pytest.raises(ConfigError, match="no default config"):
        create_model("nodefaults")
    assert create_model("nodefaults", size=3).config.size == 3


def test_unknown_override_lists_valid_fields(toys):
    with pytest.raises(ConfigError) as e:
        create_model("regtoy-tiny", dimm=3, bogus=1)
    msg = str(e.value)
    assert "'bogus'" in msg and "'dimm' (did you mean 'dim'?)" in msg
    assert "valid fields: dim, depth, kernel, inner" in msg
    with pytest.raises(ConfigError, match="total"):  # derived (init=False) fields are not overridable
        create_model("regtoy-tiny", total=3)


def test_unknown_name_suggests_close_matches(toys):
    with pytest.raises(UnknownModelError, match="did you mean 'regtoy-tiny'"):
        create_model("regtoy-tiyn")
    with pytest.raises(UnknownModelError, match="unknown model 'zzzzzz'"):
        create_model("zzzzzz")
    with pytest.raises(UnknownModelError, match="did you mean 'regtoy'"):
        get_model_class("regtoi")


def test_list_models_sorted_and_filtered(toys):
    assert list_models("regtoy-*") == ["regtoy-base", "regtoy-small", "regtoy-tiny"]
    assert list_models("*toy-[at]*") == ["othertoy-a", "regtoy-tiny"]
    everything = list_models()
    assert everything == sorted(everything) and {"regtoy-tiny", "othertoy-a"} <= set(everything)
    assert {"regtoy", "othertoy"} <= set(list_model_types())


def test_config_from_name(toys):
    cfg = RegConfig.from_name("regtoy-small", depth=4)
    assert isinstance(cfg, RegConfig) and (cfg.dim, cfg.depth, cfg.total) == (16, 4, 64)
    assert RegConfig.preset_names() == ["regtoy-base", "regtoy-small", "regtoy-tiny"]
    assert OtherConfig.from_name("othertoy-a").size == 5
    with pytest.raises(UnknownModelError, match=r"no RegConfig preset named 'othertoy-a'.*presets: regtoy-base"):
        RegConfig.from_name("othertoy-a")
    with pytest.raises(ConfigError, match="unknown override"):
        RegConfig.from_name("regtoy-tiny", nope=1)


def test_decorator_form_and_register_preset():
    @dataclass
    class DecoConfig(PresetMixin):
        n: int = 1

    @register_model("decotoy", presets={"decotoy-1": DecoConfig()})
    class Deco(nn.Module):
        config_class = DecoConfig

        def __init__(self, config):
            super().__init__()
            self.config = config

    assert get_model_class("decotoy") is Deco and Deco.model_type == "decotoy"
    register_preset("decotoy-7", "decotoy", n=7)
    register_preset("decotoy-9", Deco, DecoConfig(n=9))
    assert [create_model(n).config.n for n in list_models("decotoy-*")] == [1, 7, 9]


def test_bad_registrations(toys):
    with pytest.raises(ConfigError, match=r"unknown field for RegConfig in preset 'regtoy-bad': 'wdith'"):
        register_preset("regtoy-bad", "regtoy", {"wdith": 3})
    with pytest.raises(ConfigError, match="expected a RegConfig or a dict"):
        register_preset("regtoy-bad", "regtoy", OtherConfig())
    with pytest.raises(UnknownModelError, match="not registered"):
        register_preset("x-1", "never-registered", {})
    with pytest.raises(ValueError, match="already registered for model type 'regtoy'"):
        register_preset("regtoy-tiny", "othertoy", {})
    impostor = type("Impostor", (nn.Module,), {"config_class": RegConfig})
    with pytest.raises(ValueError, match=r"'regtoy' is already registered to .*RegModel"):
        register_model("regtoy", impostor)
    with pytest.raises(ValueError, match=r"OtherModel\.model_type is 'othertoy'"):
        register_model("renamed", OtherModel)
    with pytest.raises(TypeError, match="needs a dataclass config"):
        register_model("noconfig", nn.Linear)
    assert get_model_class("regtoy") is RegModel
    register_model("regtoy", RegModel)  # same class again (a module reload): fine
    assert get_model_class("regtoy") is RegModel


def test_builtin_packages_are_imported_on_first_miss(tmp_path, monkeypatch):
    pkg = tmp_path / "fakevistokmodels"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "_private.py").write_text("raise RuntimeError('private modules are not imported')\n")
    (pkg / "fakenet.py").write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass
            from torch import nn
            from vistok.registry import register_model

            @dataclass
            class FakeConfig:
                width: int = 2

            class FakeNet(nn.Module):
                config_class = FakeConfig
                def __init__(self, config):
                    super().__init__()
                    self.config = config
                    self.lin = nn.Linear(config.width, 1)

            register_model("fakenet", FakeNet, presets={"fakenet-3": {"width": 3}})
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "BUILTIN_PACKAGES", ("fakevistokmodels", "vistok.no_such_package"))
    monkeypatch.setattr(registry, "_builtins_loaded", False)
    try:
        assert "fakevistokmodels.fakenet" not in sys.modules
        m = create_model("fakenet-3")
        assert type(m).__name__ == "FakeNet" and m.lin.weight.shape == (1, 3)
        assert list_models("fakenet*") == ["fakenet-3"]
    finally:
        for name in ("fakevistokmodels", "fakevistokmodels.fakenet"):
            sys.modules.pop(name, None)


def test_parse_override_reads_json_values_and_keeps_strings():
    import argparse

    from vistok.registry import parse_override

    assert parse_override("dim=256") == ("dim", 256)
    assert parse_override("grid=[8, 8]") == ("grid", [8, 8])
    assert parse_override("causal=false") == ("causal", False)
    assert parse_override("quantizer=lfq") == ("quantizer", "lfq")
    assert parse_override("note=a=b") == ("note", "a=b")
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        parse_override("dim")
