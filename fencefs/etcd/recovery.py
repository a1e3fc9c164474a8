"""A host's start-up across hosts: its drafts orphaned by its previous life.

A draft etcd's record names was decided: it is installed (rolled forward).
Any other is put away as abandoned, after the file key's revision is moved
(a transaction of the dead daemon may still be in flight). Drafts of
multi-file commits go to ``HostTxns.recover`` (etcd/txns.py). While etcd is
unreachable at start-up, the whole pass is retried (etcd/patience.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from fencefs.engine.journaling import Journaling
from fencefs.etcd import coordination as co
from fencefs.etcd.client import Put
from fencefs.etcd.patience import patiently
from fencefs.etcd.txns import is_txn_draft
from fencefs.store.drafts import Drafts

if TYPE_CHECKING:
    from fencefs.etcd.engine import EtcdCoordination

log = logging.getLogger("fencefs.etcd")


async def recover_drafts(coord: EtcdCoordination, drafts: Drafts, journaling: Journaling,
                         unkeep: Callable[[str], None] = lambda rel: None) -> int:
    """This host's drafts orphaned by its previous life (see ``recover``);
    those put away are journaled as ``abandoned``, and what history kept
    for their commit is dropped (``unkeep``)."""
    def put_away(draft: str, target: str) -> None:
        name = drafts.put_away(draft, target, "?", "abandoned")
        journaling.record("abandoned", target, rejected=name, reason="daemon-restart",
                          draft=os.path.basename(draft))
        unkeep(target)

    async def recover_all() -> int:   # the drafts afresh at each try
        found = drafts.orphans()
        count = await coord.txns.recover([(p, m) for p, m in found if is_txn_draft(m)],
                                         put_away)
        singles = [(p, str(m.get("path", "?"))) for p, m in found if not is_txn_draft(m)]
        return count + await recover(coord, singles, put_away)

    if coord.client is None:   # before the mount: a client of its own
        async with coord.settings.client() as client:
            coord.client = client
            try:
                count = await patiently("recovering this host's drafts", recover_all,
                                        coord.settings.start_timeout)
            finally:
                coord.client = None
    else:
        count = await recover_all()
    if count:
        journaling.journal.sync()
    return count


async def recover(coord: EtcdCoordination, orphans: list[tuple[str, str]],
                  put_away: Callable[[str, str], None]) -> int:
    """This host's drafts left by its previous life: roll forward the
    ones a record names; for the others, first move the file key's
    revision (a transaction of theirs may still be in flight), then put
    them away (``specs/MultiHost.tla``, Recover)."""
    client = coord._client("")
    count = 0
    for draft, target in orphans:
        view = await co.read(client, coord.layout, target)
        name = os.path.basename(draft)
        if view.record is not None and view.record.content == name:
            try:
                coord._install(name, target)
                log.warning("rolled %s forward to v%d at restart", target, view.version)
            except FileNotFoundError:
                pass
            continue
        if view.record is not None:
            await client.txn([co.mod_is(coord.layout.file(target), view.revision)],
                             [Put(coord.layout.file(target), view.record.to_bytes())])
        put_away(draft, target)
        count += 1
    return count
