"""Store derivations (`.drv` files, ATerm text) and their hash modulo, which keys realisations.

    Derive([("out","","r:sha256","")],[("/nix/store/...-dep.drv",["out"])],[],"x86_64-linux",
           "/bin/sh",["-c","..."],[("out",""),...])

Nix 2.8 names a content-addressed derivation's output by `sha256:<hex>!<output>`, the hex being the
derivation's hash modulo (`hashDerivationModulo` with its outputs masked): the SHA-256 of its ATerm
with every output path and every environment variable named like an output emptied, and each input
derivation's path replaced by that derivation's own hash modulo, recursively. A fixed-output input
stands for `fixed:out:<method:algo>:<hash>:<path>` hashed instead, so a new way to fetch the same
file changes nothing downstream. Checked against the ids Nix 2.8 writes in its Realisations table.
"""

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

MAX_DERIVATION_BYTES = 16 << 20
_TOKEN = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|([\[\](),])|(Derive))', re.S)
_UNESCAPE = {"n": "\n", "r": "\r", "t": "\t"}
_ESCAPE = str.maketrans({'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


class DerivationError(ValueError):
    pass


@dataclass(frozen=True)
class Output:
    name: str
    path: str  # empty for a floating content-addressed output
    hash_algo: str  # `r:sha256` (recursive) or `sha256`, for content-addressed outputs
    hash: str  # hex, for fixed-output ones


@dataclass(frozen=True)
class Derivation:
    outputs: tuple[Output, ...]
    input_drvs: tuple[tuple[str, tuple[str, ...]], ...]  # (.drv path, output names)
    input_srcs: tuple[str, ...]
    platform: str
    builder: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, text: str) -> "Derivation":
        if len(text) > MAX_DERIVATION_BYTES:
            raise DerivationError("derivation too large")
        try:
            return _Reader(text).derivation()
        except (IndexError, ValueError) as error:
            raise DerivationError(f"not a derivation: {error}") from None

    @property
    def fixed_output(self) -> bool:
        return all(output.hash for output in self.outputs)

    def unparse(self, mask_outputs: bool, input_drvs: tuple[tuple[str, tuple[str, ...]], ...] | None = None) -> str:
        """The ATerm, with outputs masked and other input derivations as `hashDerivationModulo` wants."""
        names = {output.name for output in self.outputs}
        outputs = ",".join(
            f"({_s(o.name)},{_s('' if mask_outputs else o.path)},{_s(o.hash_algo)},{_s(o.hash)})" for o in self.outputs)
        inputs = ",".join(f"({_s(path)},{_list(outs)})" for path, outs in
                          (self.input_drvs if input_drvs is None else input_drvs))
        env = ",".join(f"({_s(key)},{_s('' if mask_outputs and key in names else value)})" for key, value in self.env)
        return (f"Derive([{outputs}],[{inputs}],{_list(self.input_srcs)},{_s(self.platform)},{_s(self.builder)},"
                f"{_list(self.args)},[{env}])")


def hash_modulo(drv_path: str, read: Callable[[str], Derivation], mask_outputs: bool = True) -> dict[str, str]:
    """Output name -> hex hash modulo of the derivation at `drv_path` (realisation ids take the
    masked one); `read` gives the derivation at a path, for the inputs."""
    known: dict[str, dict[str, str]] = {}

    def modulo(path: str, mask: bool) -> dict[str, str]:
        if not mask and path in known:
            return known[path]
        drv = read(path)
        if drv.fixed_output:
            found = {o.name: hashlib.sha256(f"fixed:out:{o.hash_algo}:{o.hash}:{o.path}".encode()).hexdigest()
                     for o in drv.outputs}
        else:
            inputs: dict[str, set[str]] = {}
            for input_path, input_outputs in drv.input_drvs:
                hashes = modulo(input_path, False)
                for name in input_outputs:
                    inputs.setdefault(hashes[name], set()).add(name)
            text = drv.unparse(mask, tuple((h, tuple(sorted(outs))) for h, outs in sorted(inputs.items())))
            digest = hashlib.sha256(text.encode()).hexdigest()
            found = {o.name: digest for o in drv.outputs}
        if not mask:
            known[path] = found
        return found

    return modulo(drv_path, mask_outputs)


def _s(text: str) -> str:
    return '"' + text.translate(_ESCAPE) + '"'


def _list(items: tuple[str, ...]) -> str:
    return "[" + ",".join(map(_s, items)) + "]"


class _Reader:
    def __init__(self, text: str) -> None:
        self.tokens = [(m.group(1), m.group(2) or m.group(3)) for m in _TOKEN.finditer(text)]
        if sum(len(m.group(0)) for m in _TOKEN.finditer(text)) != len(text.rstrip()):
            raise ValueError("unexpected characters")
        self.at = 0

    def _next(self) -> tuple[str | None, str | None]:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def _expect(self, symbol: str) -> None:
        if self._next()[1] != symbol:
            raise ValueError(f"expected {symbol!r}")

    def _string(self) -> str:
        text, symbol = self._next()
        if text is None:
            raise ValueError(f"expected a string, got {symbol!r}")
        return re.sub(r"\\(.)", lambda m: _UNESCAPE.get(m.group(1), m.group(1)), text, flags=re.S)

    def _many(self, item: Callable[[], object]) -> list:
        self._expect("[")
        found = []
        while self.tokens[self.at][1] != "]":
            if found:
                self._expect(",")
            found.append(item())
        self._expect("]")
        return found

    def _tuple(self, *items: Callable[[], object]) -> tuple:
        self._expect("(")
        found = []
        for n, item in enumerate(items):
            if n:
                self._expect(",")
            found.append(item())
        self._expect(")")
        return tuple(found)

    def derivation(self) -> Derivation:
        self._expect("Derive")
        self._expect("(")
        s = self._string
        outputs = tuple(Output(*t) for t in self._many(lambda: self._tuple(s, s, s, s)))
        self._expect(",")
        input_drvs = tuple((p, tuple(o)) for p, o in self._many(lambda: self._tuple(s, lambda: self._many(s))))
        self._expect(",")
        srcs = tuple(self._many(s))
        self._expect(",")
        platform = s()
        self._expect(",")
        builder = s()
        self._expect(",")
        args = tuple(self._many(s))
        self._expect(",")
        env = tuple(self._many(lambda: self._tuple(s, s)))
        self._expect(")")
        if self.at != len(self.tokens):
            raise ValueError("text after the derivation")
        return Derivation(outputs, input_drvs, srcs, platform, builder, args, env)
