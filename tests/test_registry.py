"""Registry, config and spec behaviour that every user relies on."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from zoo import ZooError, create_mixer, get_config, get_spec, list_mixers, register
from zoo.base import Complexity, MixerConfig, MixerSpec, TokenMixer, config_fields
from zoo.mixers.softmax import SoftmaxMixer


def test_create_mixer_overrides_and_defaults():
    m = create_mixer("softmax", dim=64, heads=8)
    assert m.config.dim == 64 and m.config.heads == 8 and m.config.impl == "sdpa"
    # None overrides are dropped, so CLI defaults never mask config defaults
    assert create_mixer("softmax", dim=64, impl=None).config.impl == "sdpa"


def test_config_is_frozen():
    cfg = get_config("softmax")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dim = 3  # type: ignore[misc]


def test_unknown_name_did_you_mean():
    with pytest.raises(ValueError, match=r"unknown name 'sofmax'.*Did you mean 'softmax'"):
        create_mixer("sofmax")


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match=r"unknown config key 'imp' \(did you mean 'impl'\?\); valid keys: dim, heads, impl"):
        create_mixer("softmax", imp="eager")


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"heads": 3}, r"heads: expected a divisor of dim=256, got heads=3"),
        ({"dim": 0}, r"dim: expected a positive integer, got 0"),
        ({"dim": 2.5}, r"dim: expected a positive integer, got 2.5"),
        ({"impl": "flash"}, r"impl: expected one of 'sdpa', 'eager', 'xformers', got 'flash'"),
    ],
)
def test_invalid_config_values(overrides, match):
    with pytest.raises(ZooError, match=match):
        create_mixer("softmax", **overrides)


def test_bad_dtype_argument():
    with pytest.raises(TypeError, match="dtype: expected a floating torch.dtype"):
        create_mixer("softmax", dtype=torch.int32)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register(SoftmaxMixer)


def test_register_requires_spec_and_config():
    class NoSpec(TokenMixer):
        pass

    with pytest.raises(TypeError, match="spec"):
        register(NoSpec)


def test_list_mixers_pattern_and_filters():
    names = list_mixers()
    assert names == sorted(names) and "softmax" in names
    assert list_mixers("soft*") == ["softmax"]
    assert "softmax" in list_mixers(causal=True)
    assert all(get_spec(n).causal for n in list_mixers(causal=True))
    assert list_mixers("no_such_*") == []
    with pytest.raises(ValueError, match="unknown filter"):
        list_mixers(bogus=True)


def test_spec_readable_without_building():
    spec = get_spec("softmax")
    assert isinstance(spec, MixerSpec)
    assert spec.time is Complexity.QUADRATIC and spec.time.exponent == 2.0
    assert "flops" not in spec.summary()


def test_config_fields_have_help():
    for name in list_mixers():
        from zoo.registry import get_mixer_class

        for f in config_fields(get_mixer_class(name).Config):
            assert f["help"], f"{name}.{f['name']} has no one-line meaning"


def test_wrong_config_class_rejected():
    @dataclasses.dataclass(frozen=True)
    class Other(MixerConfig):
        pass

    with pytest.raises(TypeError, match="config: expected SoftmaxConfig"):
        SoftmaxMixer(Other())


def test_softmax_xformers_clear_error_on_cpu():
    m = create_mixer("softmax", dim=16, heads=2, impl="xformers")
    with pytest.raises(ValueError, match="impl: 'xformers' needs a CUDA tensor"):
        m(torch.randn(1, 4, 16))
