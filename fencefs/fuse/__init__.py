"""The FUSE layer: translates kernel requests to the commit engine (fencefs.engine)."""
