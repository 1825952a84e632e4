"""Store path names: the 32-character nix32 hash part and the name after it."""

import re
from dataclasses import dataclass

STORE_DIR = "/nix/store"
HASH_PART_LENGTH = 32
MAX_NAME_LENGTH = 211

HASH_PART_RE = re.compile(r"[0-9a-df-np-sv-z]{32}")
_NAME_RE = re.compile(r"[A-Za-z0-9+\-._?=]+")


def is_hash_part(text: str) -> bool:
    return HASH_PART_RE.fullmatch(text) is not None


@dataclass(frozen=True, order=True)
class StorePath:
    """A store path without its store directory, e.g. `<hash>-hello-2.12`."""

    hash_part: str
    name: str

    @classmethod
    def from_basename(cls, basename: str) -> "StorePath":
        hash_part, dash, name = basename.partition("-")
        if not is_hash_part(hash_part) or not dash:
            raise ValueError(f"invalid store path hash part in {basename[:80]!r}")
        if not _NAME_RE.fullmatch(name) or len(name) > MAX_NAME_LENGTH or name in (".", ".."):
            raise ValueError(f"invalid store path name in {basename[:80]!r}")
        return cls(hash_part, name)

    @classmethod
    def parse(cls, path: str, store_dir: str = STORE_DIR) -> "StorePath":
        prefix = store_dir.rstrip("/") + "/"
        if not path.startswith(prefix):
            raise ValueError(f"{path[:80]!r} is not in {store_dir}")
        return cls.from_basename(path[len(prefix):])

    @classmethod
    def derivation(cls, basename: str) -> "StorePath":
        """A derivation's path from its basename, `<hash>-<name>.drv`; ValueError for anything else."""
        if not basename.endswith(".drv"):
            raise ValueError(f"no .drv at the end of {basename[:80]!r}")
        return cls.from_basename(basename)

    @property
    def basename(self) -> str:
        return f"{self.hash_part}-{self.name}"

    def full(self, store_dir: str = STORE_DIR) -> str:
        return f"{store_dir.rstrip('/')}/{self.basename}"

    def __str__(self) -> str:
        return self.basename
