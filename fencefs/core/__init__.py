"""The pure fencing core: no pyfuse3, no trio, no I/O.

``tests/test_layers.py`` fails if this package imports either.
"""

from fencefs.core.coordinator import Coordinator, decide
from fencefs.core.errors import BadValue, Busy, Conflict, Fenced, FenceError
from fencefs.core.model import Caller, Claim, FileState, Kind, Persisted

__all__ = [
    "BadValue", "Busy", "Caller", "Claim", "Conflict", "Coordinator", "FenceError", "Fenced",
    "FileState", "Kind", "Persisted", "decide",
]
