#!/usr/bin/env python3
"""Run the kosoku CLI with one Python-3 fix to the vendored Autobahn 12.*/13.*
case code. Arguments are kosoku's own (see `kosoku -h`).

Why: kosoku 0.1.0 hands a case's onMessage() an uncompressed message as `str`
(latin-1 for binary) but a compressed one as `bytes`. The 12.*/13.* cases then
do `hashlib.sha1().update(msg)`, which raises "Strings must be encoded before
hashing" under Python 3 whenever the server sends an echo without compressing
it (which RFC 7692 allows per message: RSV1 says which) and the case ends as
ERROR. Under Autobahn's Python 2 runner str was bytes, so this wrapper restores
exactly that: it encodes a `str` message back to its bytes before the case's
own checks (type, length, SHA-1 against what was sent) run unchanged. It is
the same kind of runtime shim as kosoku's own binascii.b2a_hex patch.
"""

from __future__ import annotations

import importlib
import sys


def _patch_compression_cases() -> int:
    from kosoku._caseindex import initialize_shims

    initialize_shims()  # puts the vendored case modules on sys.path
    module = importlib.import_module("case12_x_x")
    patched = 0
    for attribute in ("Case12_X_X", "Case13_X_X"):
        for cls in getattr(module, attribute, []):
            original = cls.onMessage

            def on_message(self, msg, binary, _original=original):  # type: ignore[no-untyped-def]
                if isinstance(msg, str):
                    msg = msg.encode("latin-1" if binary else "utf-8")
                return _original(self, msg, binary)

            cls.onMessage = on_message
            patched += 1
    return patched


if __name__ == "__main__":
    n = _patch_compression_cases()
    if n == 0:
        print("kosoku_compat: found no 12.*/13.* case classes to patch", file=sys.stderr)
        sys.exit(2)
    from kosoku._cli import main

    main()
