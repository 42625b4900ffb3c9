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
    # a key not given keeps its default; None is a value, never dropped
    assert create_mixer("softmax", dim=64).config.impl == "sdpa"
    with pytest.raises(ValueError, match="impl"):
        create_mixer("softmax", dim=64, impl=None)


def test_none_is_a_value_not_a_missing_key():
    """``sketch_size=None`` selects the int(4 ln N) mode (it was silently 256)."""
    assert get_config("skeinformer").sketch_size == 256
    assert get_config("skeinformer", sketch_size=None).sketch_size is None
    assert create_mixer("skeinformer", dim=16, heads=2, sketch_size=None).config.sketch_size is None


def test_cli_override_parser_keeps_none():
    from profiler.cases import parse_mixers

    (choice,) = parse_mixers("skeinformer[sketch_size=none]")
    assert dict(choice.overrides) == {"sketch_size": None}
    assert parse_mixers(choice.label)[0] == choice  # the record's label parses back to the same choice
    (choice,) = parse_mixers("skeinformer[sketch_size=64]")
    assert dict(choice.overrides) == {"sketch_size": 64}
    with pytest.raises(ValueError, match="expected an integer"):
        parse_mixers("linformer[proj_len=none]")  # not Optional: none is no integer


def test_help_lists_names_and_where_options_are():
    import zoo

    doc = zoo.create_mixer.__doc__
    assert all(name in doc for name in list_mixers())
    assert "zoo info" in doc and "Config" in doc
    assert zoo.models.Encoder is not None


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


def test_skeinformer_default_sketch_is_int_4_ln_n():
    """The reference and the spec use int(4 ln n): 19 columns at T=128 (ceil gave 20)."""
    from zoo.mixers.skeinformer import sketch_width

    assert sketch_width(None, 128) == 19
    assert sketch_width(None, 2) == 2 and sketch_width(None, 1) == 1
    m = create_mixer("skeinformer", dim=16, heads=2, sketch_size=None).eval()
    from zoo.mixers.skeinformer import skein_attention

    q = k = v = torch.randn(1, 2, 128, 8)
    _, draw = skein_attention(q, k, v, None, 7, None)
    assert draw.d.tolist() == [19]
    assert m(torch.randn(1, 128, 16)).shape == (1, 128, 16)
