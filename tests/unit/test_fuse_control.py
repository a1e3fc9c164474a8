"""Control values (fencefs.fuse.control): what setfattr may write."""

from __future__ import annotations

import pytest

from fencefs.core.errors import BadValue
from fencefs.core.model import FileState
from fencefs.fuse import control


@pytest.mark.parametrize("value", [b"1", b" 1\n", b"1\n"])
def test_one_accepts_one(value: bytes) -> None:
    control.parse_one(value)


@pytest.mark.parametrize("value", [b"", b"0", b"2", b"yes", b"11", b"1\x00", b"\xff", b"1 1"])
def test_one_refuses_everything_else(value: bytes) -> None:
    with pytest.raises(BadValue) as info:
        control.parse_one(value, control.RENEW)
    assert "user.fencefs.renew takes the value 1" in str(info.value)


@pytest.mark.parametrize(("value", "identity"), [
    (b"planner-7", "agent:planner-7"),
    (b" planner-7\n", "agent:planner-7"),
    (b"agent:x", "agent:x"),
    (b"pid:42", "pid:42"),
    (b"thread:7", "thread:7"),
    (b"session:3", "session:3"),
    ("é".encode(), "agent:é"),
    (b"a b", "agent:a b"),
    (b"x" * 300, "agent:" + "x" * 300),
])
def test_identities(value: bytes, identity: str) -> None:
    assert control.parse_identity(value) == identity


@pytest.mark.parametrize("value", [b"", b"  \n", b"\xff\xfe", b"x" * 301, b"a\x00b",
                                   b"a\nb", b"\x1b[2J", "a\u200bb".encode()])
def test_bad_identities(value: bytes) -> None:
    with pytest.raises(BadValue):
        control.parse_identity(value)


@pytest.mark.parametrize("value", [b"optimistic", b"exclusive", b"shared", b" shared\n"])
def test_policies(value: bytes) -> None:
    assert control.parse_policy(value) == value.decode().strip()


@pytest.mark.parametrize("value", [b"", b"EXCLUSIVE", b"exclusive\x00", b"\xe9", b"none",
                                   b"optimistic" * 2])
def test_bad_policies(value: bytes) -> None:
    with pytest.raises(BadValue):
        control.parse_policy(value)


def test_names() -> None:
    assert control.is_control("user.fencefs.version")
    assert not control.is_control("user.fencefs")
    assert not control.is_control("user.note")
    assert control.READABLE == ("user.fencefs.version", "user.fencefs.epoch",
                                "user.fencefs.claims", "user.fencefs.claim",
                                "user.fencefs.policy")


def test_plain_values() -> None:
    file = FileState("plan.md", 12, 3)
    assert control.value_of(control.VERSION, file, "pid:1", 0.0, "optimistic") == b"12"
    assert control.value_of(control.EPOCH, file, "pid:1", 0.0, "optimistic") == b"3"
    assert control.value_of(control.POLICY, file, "pid:1", 0.0, "shared") == b"shared"
    assert control.value_of(control.CLAIMS, file, "pid:1", 0.0, "shared") == b""
    with pytest.raises(KeyError):
        control.value_of(control.RECLAIM, file, "pid:1", 0.0, "shared")
    assert control.status_of([file], 0.0, lambda f: "optimistic") == b"[]"  # no claims
