"""Work around the slow bytes copy in iroh's Python binding.

The generated `_UniffiRustBufferBuilder.write` copies every bytes argument into Rust memory one
byte at a time in Python (iroh-ffi issue 229, fixed upstream by uniffi 0.32): about 5 MiB/s for
`SendStream.write_all`. `install()` replaces it with a single memmove, measured at 150-200 MiB/s
(bench/peers.py prints the figure). It only patches the known slow version: a wheel whose writer
no longer loops over the bytes is left alone, so this module becomes a no-op, then removable,
once a fixed wheel ships.
"""

import ctypes
import logging

from iroh import iroh_ffi

log = logging.getLogger(__name__)

_Builder = iroh_ffi._UniffiRustBufferBuilder


def _write(self: _Builder, value: bytes) -> None:  # type: ignore[valid-type]
    size = len(value)
    with self._reserve(size):
        ctypes.memmove(ctypes.cast(self.rbuf.data, ctypes.c_void_p).value + self.rbuf.len, value, size)


def is_slow(write: object) -> bool:
    """The generated writer that iterates over the bytes, as shipped in iroh 1.2.0's wheel."""
    code = getattr(write, "__code__", None)
    return code is not None and "enumerate" in code.co_names


def install() -> bool:
    """Patch the binding if it has the slow writer; True when patched (now or before)."""
    if _Builder.write is _write:
        return True
    if not is_slow(_Builder.write):
        log.info("iroh binding writes bytes efficiently: no patch needed")
        return False
    _Builder.write = _write
    return True
