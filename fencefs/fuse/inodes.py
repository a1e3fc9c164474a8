"""Inode numbers for paths.

The kernel speaks in inode numbers; fencefs's state belongs to paths (a
commit replaces the backing inode, the path stays). Each node is a (parent,
name) pair, so renaming a directory moves everything below it at once. The
lookup count follows the kernel's: counted up by lookup/create/readdirplus,
down by forget.
"""

from __future__ import annotations

import errno
import itertools
from dataclasses import dataclass

import pyfuse3

ROOT = pyfuse3.ROOT_INODE
DETACHED = "\0deleted"  # marks the name of a node whose entry is gone


@dataclass(slots=True)
class Node:
    ino: int
    parent: int
    name: str
    nlookup: int = 0


class InodeTable:
    def __init__(self) -> None:
        self._next = itertools.count(ROOT + 1)
        self._by_ino: dict[int, Node] = {ROOT: Node(ROOT, ROOT, "", 1)}
        self._by_key: dict[tuple[int, str], Node] = {}
        # the attached children of each directory node: paths_under walks
        # down from one node instead of scanning every inode
        self._children: dict[int, dict[str, Node]] = {}

    def __len__(self) -> int:
        return len(self._by_ino)

    def node(self, ino: int) -> Node:
        try:
            return self._by_ino[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None  # inode forgotten

    def path(self, ino: int) -> str:
        """The path of ``ino`` relative to the backing root ('' for root).

        ESTALE for a node that was unlinked or replaced by a rename (or one
        below such a directory): it has no path any more. The kernel answers
        ESTALE from a path operation by looking the path up again, so an
        open() that raced with a rename over its file finds the new one.
        """
        parts = []
        node = self.node(ino)
        while node.ino != ROOT:
            if DETACHED in node.name:
                raise pyfuse3.FUSEError(errno.ESTALE)
            parts.append(node.name)
            node = self._by_ino[node.parent]
        return "/".join(reversed(parts))

    def detached(self, ino: int) -> bool:
        node = self._by_ino.get(ino)
        while node is not None and node.ino != ROOT:
            if DETACHED in node.name:
                return True
            node = self._by_ino.get(node.parent)
        return False

    def child_path(self, parent: int, name: str) -> str:
        base = self.path(parent)
        return f"{base}/{name}" if base else name

    def ino_of(self, path: str) -> int | None:
        """The number the kernel knows ``path`` by, if it knows it."""
        ino = ROOT
        for name in path.split("/") if path else ():
            node = self._by_key.get((ino, name))
            if node is None:
                return None
            ino = node.ino
        return ino

    def find(self, parent: int, name: str) -> Node | None:
        return self._by_key.get((parent, name))

    def remember(self, parent: int, name: str) -> Node:
        """The node for (parent, name), its lookup count up by one."""
        node = self._by_key.get((parent, name))
        if node is None:
            node = Node(next(self._next), parent, name)
            self._by_ino[node.ino] = node
            self._attach(node)
        node.nlookup += 1
        return node

    def _attach(self, node: Node) -> None:
        self._by_key[(node.parent, node.name)] = node
        self._children.setdefault(node.parent, {})[node.name] = node

    def _detach(self, parent: int, name: str) -> Node | None:
        node = self._by_key.pop((parent, name), None)
        kids = self._children.get(parent)
        if kids is not None:
            kids.pop(name, None)
            if not kids:
                del self._children[parent]
        return node

    def forget(self, ino: int, count: int) -> str | None:
        """Count down; returns the path of a node the kernel no longer knows."""
        node = self._by_ino.get(ino)
        if node is None or ino == ROOT:
            return None
        node.nlookup -= count
        if node.nlookup > 0:
            return None
        attached = self._by_key.get((node.parent, node.name)) is node
        path = None
        if attached and node.parent in self._by_ino and not self.detached(ino):
            path = self.path(ino)  # (a detached directory above would raise ESTALE)
        del self._by_ino[ino]
        if attached:
            self._detach(node.parent, node.name)
        return path

    def paths_under(self, root: str) -> list[str]:
        """Known, attached paths below ``root``, deepest first: a walk down
        the children index from ``root``'s node (its cost is the size of
        that subtree, not of the table)."""
        top = self.ino_of(root)
        if top is None:
            return []
        found = []
        stack = [(top, root)]
        while stack:
            ino, path = stack.pop()
            for name, node in self._children.get(ino, {}).items():
                child = f"{path}/{name}" if path else name
                found.append(child)
                stack.append((node.ino, child))
        return sorted(found, key=lambda p: -p.count("/"))

    def unlinked(self, parent: int, name: str) -> None:
        """The entry is gone; a still-known node keeps its number, detached."""
        node = self._detach(parent, name)
        if node is not None:
            node.name = f"{name}{DETACHED}{node.ino}"

    def moved(self, parent: int, name: str, new_parent: int, new_name: str) -> None:
        self.unlinked(new_parent, new_name)
        node = self._detach(parent, name)
        if node is not None:
            node.parent, node.name = new_parent, new_name
            self._attach(node)
