"""What the host offers as a substituter: paths it can hand to Nix, signed with its key."""

import functools
import logging
import sqlite3
from collections.abc import AsyncIterator

from starlette.concurrency import iterate_in_threadpool

from ..nix.narinfo import PathInfo
from ..nix.nar import NarError
from ..nix.signing import SecretKey, add_signature
from .local import LocalStore

log = logging.getLogger(__name__)


class Unavailable(Exception):
    """The path exists but cannot be served right now (database busy, files unreadable)."""


class Substituter:
    def __init__(self, local: LocalStore, key: SecretKey | None) -> None:
        self.local = local
        self.key = key
        # Nix often asks twice (HEAD, then GET) and many clients ask for the same paths.
        self._sign = functools.lru_cache(maxsize=8192)(key.sign) if key else None

    async def path_info(self, hash_part: str) -> PathInfo | None:
        """Signed info for a path this host can serve, or None; `hash_part` must be validated."""
        try:
            info = await self.local.query(hash_part)
        except sqlite3.Error as error:
            raise Unavailable(f"store database: {error}") from error
        if info is None or not self.local.has_files(info.store_path):
            return None
        return add_signature(info, self._sign(info.fingerprint())) if self._sign else info

    def nar(self, info: PathInfo) -> AsyncIterator[bytes]:
        """The NAR of a path returned by `path_info`, checked to be exactly NarSize bytes long."""
        return _exact_size(iterate_in_threadpool(self.local.nar(info.store_path)), info)


async def _exact_size(chunks: AsyncIterator[bytes], info: PathInfo) -> AsyncIterator[bytes]:
    """Refuse to finish a NAR whose length disagrees with the database: Content-Length promised it."""
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > info.nar_size:
            break
        yield chunk
    if size != info.nar_size:
        raise NarError(f"{info.store_path} is {size} bytes on disk, database says {info.nar_size}")
