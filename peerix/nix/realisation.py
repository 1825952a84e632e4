"""Realisations of content-addressed derivations: which store path a derivation output built to.

    {"dependentRealisations": {}, "id": "sha256:<hex>!out", "outPath": "<hash>-<name>",
     "signatures": ["key-1:base64"]}

Nix serves them as `realisations/<id>.doi`. A signature covers the realisation's JSON without its
signatures, keys sorted, no spaces (checked against signatures Nix 2.8 made); signing.py's helpers
sign and check them as they do narinfo. Nix 2.8 does not check a substituted realisation's signature
itself, so whoever hands one to it must.

Current Nix (2.35 on) keys them by derivation path instead, as build trace entries served at
`build-trace-v2/<drv basename>/<output>.doi`: the file holds `{"outPath", "signatures"}`, and a
signature covers `{"key":{"drvPath","outputName"},"value":{"outPath"}}` (keys sorted, compact), as
its source and changelog say; no such Nix runs here to check it against.
"""

import json
import re
from dataclasses import dataclass, replace
from typing import Any, Self

from .storepath import StorePath

MAX_REALISATION_BYTES = 64 << 10
_OUTPUT = r"[A-Za-z0-9+\-._?=]{1,64}"
_ID = re.compile(r"sha256:[0-9a-f]{64}!" + _OUTPUT)


class RealisationError(ValueError):
    pass


def is_id(text: str) -> bool:
    """`sha256:<hex of the derivation's hash modulo>!<output name>`."""
    return _ID.fullmatch(text) is not None


def is_output_name(text: str) -> bool:
    return re.fullmatch(_OUTPUT, text) is not None and text not in (".", "..")


@dataclass(frozen=True)
class Realisation:
    id: str
    out_path: StorePath
    sigs: tuple[str, ...] = ()
    dependent: tuple[tuple[str, str], ...] = ()  # (id, out path basename), as Nix keeps them

    @classmethod
    def parse(cls, text: str | bytes) -> Self:
        if len(text) > MAX_REALISATION_BYTES:
            raise RealisationError("realisation too large")
        try:
            data = json.loads(text)
            id_, out_path, signatures = data["id"], data["outPath"], data.get("signatures", [])
            dependent = data.get("dependentRealisations", {})
        except (ValueError, KeyError, TypeError) as error:
            raise RealisationError(f"not a realisation: {error}") from None
        if not isinstance(id_, str) or not is_id(id_):
            raise RealisationError(f"invalid realisation id {str(id_)[:80]!r}")
        if not (isinstance(signatures, list) and all(isinstance(s, str) for s in signatures)
                and isinstance(dependent, dict) and all(isinstance(k, str) and isinstance(v, str) and is_id(k)
                                                        for k, v in dependent.items())):
            raise RealisationError("realisation fields have the wrong types")
        try:
            path = StorePath.from_basename(out_path) if isinstance(out_path, str) else None
            for basename in dependent.values():
                StorePath.from_basename(basename)
        except ValueError as error:
            raise RealisationError(str(error)) from None
        if path is None:
            raise RealisationError("outPath must be a store path basename")
        return cls(id_, path, tuple(signatures), tuple(sorted(dependent.items())))

    def _json(self, signatures: bool) -> dict[str, Any]:
        data: dict[str, Any] = {"dependentRealisations": dict(self.dependent), "id": self.id,
                                "outPath": self.out_path.basename}
        if signatures:
            data["signatures"] = list(self.sigs)
        return data

    def to_text(self) -> str:
        return json.dumps(self._json(True), sort_keys=True, separators=(",", ":"))

    def fingerprint(self) -> bytes:
        return json.dumps(self._json(False), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def with_sigs(self, sigs: tuple[str, ...]) -> Self:
        return replace(self, sigs=sigs)


@dataclass(frozen=True)
class BuildTraceEntry:
    """A realisation as current Nix keys it: by derivation path and output name."""

    drv: StorePath
    output: str
    out_path: StorePath
    sigs: tuple[str, ...] = ()

    def fingerprint(self) -> bytes:
        key = {"drvPath": self.drv.basename, "outputName": self.output}
        return json.dumps({"key": key, "value": {"outPath": self.out_path.basename}}, sort_keys=True,
                          separators=(",", ":")).encode()

    def to_text(self) -> str:
        return json.dumps({"outPath": self.out_path.basename, "signatures": list(self.sigs)}, separators=(",", ":"))

    def with_sigs(self, sigs: tuple[str, ...]) -> Self:
        return replace(self, sigs=sigs)
