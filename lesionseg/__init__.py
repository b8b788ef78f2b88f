"""lesionseg: 3D lesion segmentation in MRI with Tversky-loss β sweeps.

The functions of `lesionseg.api` are the public interface, one per command of the `lesionseg` command line:
`demo_data`, `check`, `train`, `predict`, `evaluate`, `sweep`, `report` (and `load`, a config from a file or
object plus overrides).
"""

from lesionseg.api import check, demo_data, evaluate, load, predict, report, sweep, train
from lesionseg.errors import LesionsegError

__version__ = "0.1.0"
__all__ = ["LesionsegError", "__version__", "check", "demo_data", "evaluate", "load", "predict", "report", "sweep",
           "train"]
