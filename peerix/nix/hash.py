"""SHA-256 hashes in the notations Nix writes: `sha256:<nix32|hex|base64>` and SRI `sha256-<base64>`."""

import base64
import binascii

from . import nix32

SHA256_SIZE = 32


def parse_sha256(text: str) -> bytes:
    """Return the digest of a Nix sha256 hash string; raise ValueError for anything else."""
    if text.startswith("sha256-"):
        body, encodings = text[7:], ("base64",)
    elif text.startswith("sha256:"):
        body, encodings = text[7:], ("nix32", "hex", "base64")
    else:
        raise ValueError(f"not a sha256 hash: {text[:80]!r}")
    lengths = {"nix32": nix32.encoded_length(SHA256_SIZE), "hex": 2 * SHA256_SIZE, "base64": 44}
    for encoding in encodings:
        if len(body) == lengths[encoding]:
            try:
                digest = _DECODERS[encoding](body)
            except (ValueError, binascii.Error) as error:
                raise ValueError(f"invalid sha256 hash {text[:80]!r}: {error}") from None
            if len(digest) == SHA256_SIZE:
                return digest
    raise ValueError(f"invalid sha256 hash {text[:80]!r}")


def format_sha256(digest: bytes) -> str:
    """The form narinfo uses: `sha256:<nix32>`."""
    return "sha256:" + nix32.encode(digest)


_DECODERS = {
    "nix32": nix32.decode,
    "hex": bytes.fromhex,
    "base64": lambda body: base64.b64decode(body, validate=True),
}
