"""Registered model components: split detectors, backbone splitter, feature-compression necks."""
from .compressors import *  # noqa: F401,F403
from .detectors import *  # noqa: F401,F403
from .split import BackboneSplitter, SUPPORTED_BACKBONES  # noqa: F401
from .exits import EdgeExit, EdgeExitPyramid, ExitOutput  # noqa: F401
from .routers import *  # noqa: F401,F403
