"""The one place where domain errors become FUSE errors.

Anything but ``pyfuse3.FUSEError`` escaping a handler stops the filesystem
and leaves a dead mount, so every handler of ``FenceOperations`` is wrapped
here: fencing errors map to their errno, OSError keeps its errno, anything
else is logged with its traceback and answered with EIO.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3

from fencefs.core.errors import BadValue, FenceError

log = logging.getLogger("fencefs.fuse")

T = TypeVar("T")

# Handlers that the kernel calls without expecting an answer: never raise.
_SILENT = {"forget"}


def to_fuse_error(exc: BaseException) -> pyfuse3.FUSEError:
    if isinstance(exc, pyfuse3.FUSEError):
        return exc
    if isinstance(exc, FenceError):
        return pyfuse3.FUSEError(exc.errno)
    if isinstance(exc, BadValue):
        return pyfuse3.FUSEError(errno.EINVAL)
    if isinstance(exc, OSError) and exc.errno:
        return pyfuse3.FUSEError(exc.errno)
    log.error("unexpected error in handler", exc_info=exc)
    return pyfuse3.FUSEError(errno.EIO)


def _wrap(name: str, fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(fn)
    async def handler(*args: Any, **kwargs: Any) -> T:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:  # the boundary: nothing else may escape
            error = to_fuse_error(exc)
            if name in _SILENT:
                return None  # type: ignore[return-value]
            raise error from None

    return handler


C = TypeVar("C", bound=type)


def error_boundary(cls: C) -> C:
    """Wrap every request handler that ``cls`` defines."""
    for name in dir(pyfuse3.Operations):
        fn = cls.__dict__.get(name)
        if fn is not None and inspect.iscoroutinefunction(fn):
            setattr(cls, name, _wrap(name, fn))
    return cls
