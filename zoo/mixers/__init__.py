"""One import line per mixer; importing registers it."""

from zoo.mixers import softmax  # noqa: F401
