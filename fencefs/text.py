"""Text for a terminal."""

from __future__ import annotations


def shown(value: object) -> str:
    """Text for a terminal. File names and identities come from anyone who can
    write to the mount: control characters (newlines, escape sequences) and
    bytes that are not UTF-8 are shown escaped, so that they can neither
    forge lines nor drive the terminal."""
    out = []
    for ch in str(value):
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}")
    return "".join(out)
