"""The narinfo format and the fingerprint that narinfo signatures cover."""

import dataclasses
from dataclasses import dataclass, field, replace
from typing import Self

from .hash import format_sha256, parse_sha256
from .storepath import STORE_DIR, StorePath

MAX_NARINFO_BYTES = 1 << 20


class NarInfoError(ValueError):
    pass


@dataclass(frozen=True, kw_only=True)
class PathInfo:
    """What a store knows about a valid path: its NAR's hash and size, references, signatures."""

    store_path: StorePath
    nar_hash: bytes
    nar_size: int
    references: tuple[StorePath, ...] = ()
    deriver: StorePath | None = None
    sigs: tuple[str, ...] = ()
    ca: str | None = None
    registration_time: int | None = field(default=None, compare=False)
    store_dir: str = field(default=STORE_DIR, compare=False)

    def fingerprint(self) -> bytes:
        """What a `Sig:` signs; it binds path, content and references, not the URL or compression."""
        references = ",".join(sorted(ref.full(self.store_dir) for ref in self.references))
        return (
            f"1;{self.store_path.full(self.store_dir)};{format_sha256(self.nar_hash)};"
            f"{self.nar_size};{references}"
        ).encode()

    def with_sigs(self, sigs: tuple[str, ...]) -> Self:
        return replace(self, sigs=sigs)


@dataclass(frozen=True, kw_only=True)
class NarInfo(PathInfo):
    """A path's info as a binary cache publishes it: where its NAR is and how it is stored."""

    url: str
    compression: str = "none"
    file_hash: bytes | None = None
    file_size: int | None = None

    @classmethod
    def uncompressed(cls, info: PathInfo, url: str) -> "NarInfo":
        """The narinfo of an uncompressed NAR, whose file is the NAR itself."""
        fields = {name: getattr(info, name) for name in _PATH_INFO_FIELDS}
        return cls(**fields, url=url, file_hash=info.nar_hash, file_size=info.nar_size)

    def to_text(self) -> str:
        """Serialize in the field order Nix writes, always stating Compression."""
        if any(c in value for value in (self.url, self.compression, self.ca or "", *self.sigs) for c in "\r\n"):
            raise NarInfoError("narinfo field contains a line break")
        lines = [
            f"StorePath: {self.store_path.full(self.store_dir)}",
            f"URL: {self.url}",
            f"Compression: {self.compression}",
        ]
        if self.file_hash is not None:
            lines.append(f"FileHash: {format_sha256(self.file_hash)}")
        if self.file_size is not None:
            lines.append(f"FileSize: {self.file_size}")
        lines += [
            f"NarHash: {format_sha256(self.nar_hash)}",
            f"NarSize: {self.nar_size}",
            "References: " + " ".join(ref.basename for ref in self.references),
        ]
        if self.deriver is not None:
            lines.append(f"Deriver: {self.deriver.basename}")
        lines += [f"Sig: {sig}" for sig in self.sigs]
        if self.ca:
            lines.append(f"CA: {self.ca}")
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str, store_dir: str = STORE_DIR) -> "NarInfo":
        """Parse like Nix: unknown keys are ignored, a missing Compression means bzip2."""
        if len(text) > MAX_NARINFO_BYTES:
            raise NarInfoError("narinfo too large")
        fields: dict[str, str] = {}
        sigs: list[str] = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line:
                continue
            key, sep, value = line.partition(": ")
            if not sep:
                raise NarInfoError(f"line {number}: expected 'Key: value'")
            if key == "Sig":
                sigs.append(value)
            else:
                fields[key] = value
        try:
            return cls._from_fields(fields, tuple(sigs), store_dir)
        except KeyError as missing:
            raise NarInfoError(f"narinfo lacks required field {missing}") from None
        except ValueError as error:
            raise NarInfoError(str(error)) from None

    @classmethod
    def _from_fields(cls, fields: dict[str, str], sigs: tuple[str, ...], store_dir: str) -> "NarInfo":
        nar_size = int(fields["NarSize"])
        if nar_size <= 0:
            raise ValueError("NarSize must be positive")
        file_size = int(fields["FileSize"]) if "FileSize" in fields else None
        if file_size is not None and file_size < 0:
            raise ValueError("FileSize must not be negative")
        if not fields["URL"]:
            raise ValueError("URL is empty")
        deriver = fields.get("Deriver")
        return cls(
            store_path=StorePath.parse(fields["StorePath"], store_dir),
            url=fields["URL"],
            nar_hash=parse_sha256(fields["NarHash"]),
            nar_size=nar_size,
            compression=fields.get("Compression") or "bzip2",
            file_hash=parse_sha256(fields["FileHash"]) if "FileHash" in fields else None,
            file_size=file_size,
            references=tuple(StorePath.from_basename(ref) for ref in fields.get("References", "").split()),
            deriver=StorePath.from_basename(deriver) if deriver and deriver != "unknown-deriver" else None,
            sigs=sigs,
            ca=fields.get("CA") or None,
            store_dir=store_dir,
        )


_PATH_INFO_FIELDS = tuple(f.name for f in dataclasses.fields(PathInfo))
