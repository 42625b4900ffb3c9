"""zoo: efficient token mixers with one contract, a length-sweep profiler and paper-style reports.

    from zoo import create_mixer
    m = create_mixer("ponet", dim=512, heads=8)
    y = m(x, mask)            # x (B, T, D), mask bool (B, T), True = real token

``zoo.models.Encoder`` wraps any mixer in an LRA-style classifier; ``help(zoo.create_mixer)``
lists the registered names and where each mixer's options are described.
"""

from zoo.base import Complexity, MixerConfig, MixerSpec, TokenMixer
from zoo.errors import ZooError, ZooTypeError, ZooValueError
from zoo.registry import create_mixer, document_names, get_config, get_mixer_class, get_spec, list_mixers, register

from zoo import models  # noqa: E402  (zoo.models reachable after `import zoo`)

document_names()

__all__ = [
    "Complexity",
    "MixerConfig",
    "MixerSpec",
    "TokenMixer",
    "ZooError",
    "ZooTypeError",
    "ZooValueError",
    "create_mixer",
    "get_config",
    "get_mixer_class",
    "get_spec",
    "list_mixers",
    "models",
    "register",
]

__version__ = "0.1.0"
