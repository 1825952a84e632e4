"""Nix signing keys (`name:base64`) and signatures, with libsodium's ed25519 via PyNaCl: of narinfo
(path infos) and of realisations alike, whatever carries `sigs` over a fingerprint."""

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, Self, TypeVar

import nacl.exceptions
import nacl.signing


class Signed(Protocol):
    sigs: tuple[str, ...]

    def fingerprint(self) -> bytes: ...

    def with_sigs(self, sigs: tuple[str, ...]) -> Self: ...


Info = TypeVar("Info", bound=Signed)


class KeyFormatError(ValueError):
    pass


def _split(text: str, size: int, what: str) -> tuple[str, bytes]:
    name, sep, encoded = text.strip().partition(":")
    if not sep or not name:
        raise KeyFormatError(f"{what} must look like 'name:base64'")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise KeyFormatError(f"{what} '{name}' is not valid base64") from None
    if len(raw) != size:
        raise KeyFormatError(f"{what} '{name}' has {len(raw)} bytes, expected {size}")
    return name, raw


@dataclass(frozen=True)
class PublicKey:
    name: str
    key: nacl.signing.VerifyKey

    @classmethod
    def parse(cls, text: str) -> "PublicKey":
        name, raw = _split(text, 32, "public key")
        return cls(name, nacl.signing.VerifyKey(raw))

    def to_text(self) -> str:
        return f"{self.name}:{base64.b64encode(bytes(self.key)).decode()}"

    def verify(self, message: bytes, sig: str) -> bool:
        """True when `sig` (`name:base64`) is this key's valid signature over `message`."""
        name, sep, encoded = sig.partition(":")
        if not sep or name != self.name:
            return False
        try:
            self.key.verify(message, base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError, nacl.exceptions.BadSignatureError):
            return False
        return True


@dataclass(frozen=True)
class SecretKey:
    name: str
    key: nacl.signing.SigningKey

    @classmethod
    def generate(cls, name: str) -> "SecretKey":
        if not name or ":" in name or any(c.isspace() for c in name):
            raise KeyFormatError("key name must be non-empty without ':' or spaces")
        return cls(name, nacl.signing.SigningKey.generate())

    @classmethod
    def parse(cls, text: str) -> "SecretKey":
        """Parse libsodium's 64-byte form (seed, then public key), checking the two agree."""
        name, raw = _split(text, 64, "secret key")
        key = nacl.signing.SigningKey(raw[:32])
        if bytes(key.verify_key) != raw[32:]:
            raise KeyFormatError(f"secret key '{name}' is corrupt: its public half does not match")
        return cls(name, key)

    def to_text(self) -> str:
        raw = bytes(self.key) + bytes(self.key.verify_key)
        return f"{self.name}:{base64.b64encode(raw).decode()}"

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.name, self.key.verify_key)

    def sign(self, message: bytes) -> str:
        return f"{self.name}:{base64.b64encode(self.key.sign(message).signature).decode()}"


def add_signature(info: Info, sig: str) -> Info:
    """Add `sig`, keeping the others but replacing an older one by the same key name."""
    name = sig.partition(":")[0]
    kept = tuple(old for old in info.sigs if old.partition(":")[0] != name)
    return info.with_sigs(kept + (sig,))


def sign_info(info: Info, key: SecretKey) -> Info:
    return add_signature(info, key.sign(info.fingerprint()))


def trusted_sigs(info: Signed, keys: Iterable[PublicKey]) -> tuple[str, ...]:
    """The signatures on `info` that a key in `keys` makes valid."""
    by_name = {key.name: key for key in keys}
    fingerprint = info.fingerprint()
    return tuple(
        sig for sig in info.sigs
        if (key := by_name.get(sig.partition(":")[0])) is not None and key.verify(fingerprint, sig)
    )
