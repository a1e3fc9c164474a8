"""The FUSE layer: translates kernel requests to the core and the store."""
