"""Runs kosoku (the Autobahn WebSocket cases) with one fix to its 0.1.0 case file.

kosoku 0.1.0 ports Autobahn's Python 2 case files to Python 3, but in the compression cases
(12.x, 13.x, `cases/case12_x_x.py`) `onMessage` hashes the echoed message as it arrives with
`hashlib.sha1().update(msg)`. kosoku's runner hands a case a message that came uncompressed as a
Python 2 style `str` (one code point 0-255 per byte, as its `Utf8Validator` documents), a
compressed one as `bytes`. On a `str` Python 3 raises "Strings must be encoded before hashing"
and the case reports ERROR before anything is compared (Python 2 had `str == bytes`, so the
original never saw it). The fix below turns such a `str` back into its bytes (latin-1 maps code
points 0-255 to the same byte values), which is what the case expects: it hashes the bytes and,
for a text case, decodes them as UTF-8 itself.

Usage: the same arguments as the `kosoku` command (tests/autobahn.rs, docs/fuzzing.md).
"""

from kosoku import _caseindex
from kosoku._cli import main


def _patch_compression_cases() -> None:
    _caseindex.initialize_shims()  # puts kosoku's cases and shims on sys.path (idempotent)
    import case12_x_x  # the module kosoku's index imports: same name, same classes

    def bytes_for_text(on_message):
        def on_message_bytes(self, msg, binary):
            if isinstance(msg, str):
                msg = msg.encode("latin-1")
            return on_message(self, msg, binary)

        return on_message_bytes

    for case in case12_x_x.Case12_X_X + case12_x_x.Case13_X_X:
        case.onMessage = bytes_for_text(case.onMessage)


if __name__ == "__main__":
    _patch_compression_cases()
    main()
