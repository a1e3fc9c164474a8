"""The state attribute (fencefs.store.backing): encoding, and garbage read
as a foreign file at version 0, never as an exception."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fencefs.core.model import Persisted
from fencefs.store.backing import (
    STATE_XATTR,
    Backing,
    Fingerprint,
    decode_state,
    encode_state,
)

FP = Fingerprint(ino=12, size=34, mtime_ns=1_700_000_000_123_456_789)


@pytest.mark.parametrize("persisted", [Persisted(0, 0), Persisted(7, 3),
                                       Persisted(1, 0, "shared"), Persisted(2**40, 5, "exclusive")])
def test_state_round_trips(persisted: Persisted) -> None:
    assert decode_state(encode_state(persisted, FP)) == (persisted, FP)


GOOD = b'{"v":3,"e":1,"ino":12,"size":34,"mtime":56}'


@pytest.mark.parametrize("raw", [
    b"", b"\x00", b"\xff\xfe garbage", b"not json", b"null", b"[]", b"[1, 2]", b'"v"', b"7",
    b"{}",
    b'{"v":3,"e":1}',  # no fingerprint
    b'{"v":3,"ino":12,"size":34,"mtime":56}',  # no epoch
    b'{"v":-1,"e":1,"ino":12,"size":34,"mtime":56}',  # a negative version
    b'{"v":3,"e":-2,"ino":12,"size":34,"mtime":56}',
    b'{"v":"three","e":1,"ino":12,"size":34,"mtime":56}',
    b'{"v":null,"e":1,"ino":12,"size":34,"mtime":56}',
    b'{"v":3,"e":1,"p":"sometimes","ino":12,"size":34,"mtime":56}',  # no such policy
    b'{"v":3,"e":1,"p":["shared"],"ino":12,"size":34,"mtime":56}',
    b'{"v":3,"e":1,"p":{},"ino":12,"size":34,"mtime":56}',
    b'{"v":3,"e":1,"ino":"x","size":34,"mtime":56}',
    b'{"v":1e400,"e":1,"ino":12,"size":34,"mtime":56}',  # infinity: no integer
    b'{"v":NaN,"e":1,"ino":12,"size":34,"mtime":56}',
    b'{"v":3,"e":1,"ino":12,"size":34,"mtime":-Infinity}',
    GOOD[:-1],  # cut short
    GOOD * 2,
])
def test_garbage_state_reads_as_a_foreign_file_at_v0(raw: bytes) -> None:
    assert decode_state(raw) == (Persisted(0, 0), None)


def test_read_state_of_a_file_without_state_and_with_garbage(tmp_path: Path) -> None:
    backing = Backing(str(tmp_path))
    (tmp_path / "plain.txt").write_text("x")
    assert backing.read_state("plain.txt") == (Persisted(0, 0), None)
    os.setxattr(tmp_path / "plain.txt", STATE_XATTR, b"\x00garbage")
    assert backing.read_state("plain.txt") == (Persisted(0, 0), None)
    with pytest.raises(FileNotFoundError):
        backing.read_state("missing.txt")


def test_write_state_records_the_content_it_belongs_to(tmp_path: Path) -> None:
    backing = Backing(str(tmp_path))
    (tmp_path / "f").write_text("content")
    fp = backing.write_state("f", Persisted(4, 2, "shared"), durable=False)
    st = os.stat(tmp_path / "f")
    assert fp == Fingerprint(st.st_ino, 7, st.st_mtime_ns)
    assert backing.read_state("f") == (Persisted(4, 2, "shared"), fp)
