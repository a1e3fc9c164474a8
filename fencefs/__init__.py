"""fencefs: a FUSE filesystem that fences writes to plain shared files.

Layers: ``fencefs.core`` (pure decisions), ``fencefs.store`` (the backing
directory), ``fencefs.fuse`` (the pyfuse3 handlers), ``fencefs.cli``.
"""

__version__ = "0.1.0"
