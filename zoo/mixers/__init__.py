"""One import line per mixer; importing registers it."""

from zoo.mixers import softmax  # noqa: F401
from zoo.mixers import transnormer  # noqa: F401
from zoo.mixers import transnormer_diag  # noqa: F401
from zoo.mixers import pyramidion_block  # noqa: F401
from zoo.mixers import pyramidion  # noqa: F401
from zoo.mixers import ponet  # noqa: F401
from zoo.mixers import fnet  # noqa: F401
from zoo.mixers import skeinformer  # noqa: F401
from zoo.mixers import poolingformer  # noqa: F401
from zoo.mixers import performer  # noqa: F401
from zoo.mixers import nystrom  # noqa: F401
from zoo.mixers import linformer  # noqa: F401
from zoo.mixers import longformer  # noqa: F401
from zoo.mixers import bigbird  # noqa: F401
from zoo.mixers import mamba2  # noqa: F401
from zoo.mixers import retnet  # noqa: F401
from zoo.mixers import gla  # noqa: F401
from zoo.mixers import deltanet  # noqa: F401
from zoo.mixers import gated_deltanet  # noqa: F401
from zoo.mixers import hyena  # noqa: F401
