"""The commit engine: between the FUSE layer and the core and store.

Handlers in ``fencefs.fuse`` translate requests; this package owns what a
request means for a file's coordination state and content: claims, drafts,
the commit turn, check -> journal -> install, rejected writes, durability.
It never imports pyfuse3 (``tests/test_layers.py``): errors leave it as
``FenceError`` or ``OSError`` and the FUSE layer's boundary maps them.

Every check-and-install is a plain synchronous ``def`` run inside
``atomic()`` (``fencefs.engine.atomic``): G3 is structural, not a comment.
"""
