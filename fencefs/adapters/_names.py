"""Safe file names for arbitrary strings (namespaces, keys, session ids).

Every character outside ``[A-Za-z0-9_-]`` is written ``%XX`` per UTF-8 byte,
so a name never contains ``/``, never starts with ``.`` (hidden files, ``.``,
``..`` and the fallback's sidecars are never produced) and decodes back
exactly. The empty string is written ``%``, which no other string produces.
"""

from __future__ import annotations

import string

_SAFE = frozenset(string.ascii_letters + string.digits + "_-")
MAX_NAME = 240  # bytes; leaves room for a suffix within NAME_MAX (255)


def encode(text: str) -> str:
    if text == "":
        return "%"
    out = []
    for ch in text:
        if ch in _SAFE:
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    name = "".join(out)
    if len(name) > MAX_NAME:
        raise ValueError(f"{text[:40]!r}... is too long for a file name "
                         f"({len(name)} bytes encoded, at most {MAX_NAME})")
    return name


def decode(name: str) -> str:
    if name == "%":
        return ""
    raw = bytearray()
    i = 0
    while i < len(name):
        if name[i] == "%":
            raw.append(int(name[i + 1:i + 3], 16))
            i += 3
        else:
            raw.extend(name[i].encode("ascii"))
            i += 1
    return raw.decode("utf-8")
