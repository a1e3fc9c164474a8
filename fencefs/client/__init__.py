"""fencefs.client: typed errors and fenced read-modify-write for programs.

Plain file I/O and the standard library only: no trio, no pyfuse3, so it works
from threads and (through the ``a``-prefixed functions, which run the same
code on a worker thread) from asyncio.

On a fencefs mount every function here is ordinary file I/O on the mount:
``update`` opens the file once for read-write, reads, computes, writes and
commits (``fsync``) through that one handle, so the handle's own claim is
judged at the commit, whatever else the process's other threads or tasks do.
The mount's errnos come back as exceptions: ``FenceConflict`` (``EAGAIN``),
``Fenced`` (``ESTALE``), ``ClaimBusy`` (``EBUSY``).

On any other directory the same API works through a local fallback, meant for
developing without FUSE (see ``docs/adapters.md``): each file's version and
epoch are kept beside it in a hidden sidecar ``.NAME.fencefs-version``, and a
commit takes the directory's lock (``flock`` on ``.fencefs-local.lock``),
checks the version and epoch, writes a temporary file, fsyncs it and renames
it over the file. It raises the same errors on a stale version. It fences
only writers that use this library (a plain ``open(path, "w")`` bypasses it),
and it knows no claims, policies or leases.
"""

from __future__ import annotations

from fencefs.client.base import (
    ClaimBusy,
    ClaimState,
    FenceConflict,
    Fenced,
    FenceError,
    Versioned,
    is_fencefs,
)
from fencefs.client.files import (
    aread_versioned,
    areplace,
    aupdate,
    claim_state,
    read_versioned,
    reclaim,
    replace,
    update,
)
from fencefs.client.transactions import Transaction, transaction, update_many
from fencefs.wire import ClaimInfo

__all__ = [
    "ClaimBusy",
    "ClaimInfo",
    "ClaimState",
    "FenceConflict",
    "FenceError",
    "Fenced",
    "Versioned",
    "aread_versioned",
    "areplace",
    "aupdate",
    "claim_state",
    "is_fencefs",
    "read_versioned",
    "reclaim",
    "replace",
    "Transaction",
    "transaction",
    "update",
    "update_many",
]
