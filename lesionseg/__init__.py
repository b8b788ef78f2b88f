"""lesionseg: 3D lesion segmentation in MRI with Tversky-loss β sweeps."""

from lesionseg.errors import LesionsegError

__version__ = "0.1.0"
__all__ = ["LesionsegError", "__version__"]
