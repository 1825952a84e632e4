"""Trust policy: which paths a host accepts from peers, and which it serves to them.

Peers are untrusted. A path from a peer is accepted when it carries a valid signature by a key
the host trusts, and/or when its NarHash, NarSize and references match the upstream cache's
narinfo for the same store path (as Nix's own `VerifiedStore` idea). The same tests decide what
a host serves, so builds of its own that nobody signed do not leak to strangers.
"""

import enum
import fnmatch
from dataclasses import dataclass

from ..net.upstream import Upstream, UpstreamError
from ..nix.narinfo import PathInfo
from ..nix.signing import PublicKey, trusted_sigs

CACHE_NIXOS_ORG_KEY = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="


class Accept(enum.StrEnum):
    """What makes a peer's narinfo acceptable."""

    SIGNATURE = "signature"
    UPSTREAM = "upstream"
    EITHER = "signature-or-upstream"
    BOTH = "signature-and-upstream"


class Serve(enum.StrEnum):
    """What a host serves to peers."""

    SIGNED = "signed"
    SIGNED_OR_UPSTREAM = "signed-or-upstream"
    ALL = "all"


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str


def same_contents(a: PathInfo, b: PathInfo) -> bool:
    return (a.store_path, a.nar_hash, a.nar_size, sorted(a.references)) == (
        b.store_path, b.nar_hash, b.nar_size, sorted(b.references))


class Policy:
    def __init__(
        self, trusted_keys: list[PublicKey], accept: Accept = Accept.EITHER, serve: Serve = Serve.SIGNED_OR_UPSTREAM,
        upstream: Upstream | None = None, exclude: tuple[str, ...] = (),
    ) -> None:
        if accept in (Accept.UPSTREAM, Accept.BOTH) and upstream is None:
            raise ValueError(f"accepting paths by '{accept}' needs an upstream cache")
        self.trusted_keys = trusted_keys
        self.trusted_names = frozenset(key.name for key in trusted_keys)
        self.accept = accept
        self.serve = serve
        self.upstream = upstream
        self.exclude = exclude  # glob patterns on store path names (hash-name) never shared, whatever `serve` says

    def excluded(self, name: str) -> str | None:
        """The first exclude pattern a store path's name (`<hash>-<name>`) matches."""
        return next((pattern for pattern in self.exclude if fnmatch.fnmatchcase(name, pattern)), None)

    def trusted_sigs(self, info: PathInfo) -> tuple[str, ...]:
        return trusted_sigs(info, self.trusted_keys)

    async def check_upstream(self, info: PathInfo) -> Verdict:
        if self.upstream is None:
            return Verdict(False, "no upstream cache configured")
        try:
            upstream = await self.upstream.narinfo(info.store_path.hash_part)
        except UpstreamError as error:
            return Verdict(False, f"upstream {error}")
        if upstream is None:
            return Verdict(False, f"not in {self.upstream.url}")
        if not same_contents(info, upstream):
            return Verdict(False, f"differs from {self.upstream.url}")
        return Verdict(True, f"matches {self.upstream.url}")

    def _signed(self, info: PathInfo) -> tuple[Verdict, PathInfo]:
        kept = info.with_sigs(self.trusted_sigs(info))
        names = ", ".join(sig.partition(":")[0] for sig in kept.sigs)
        return Verdict(True, f"signed by {names}") if kept.sigs else Verdict(False, self._untrusted(info)), kept

    def accept_by_signature(self, info: PathInfo) -> tuple[Verdict, PathInfo]:
        """`accept_from_peer` without asking the upstream, for what a peer sends unasked (closure prefetch):
        a trusted signature accepts, where the policy lets a signature alone accept."""
        signed, kept = self._signed(info)
        if signed.ok and self.accept not in (Accept.SIGNATURE, Accept.EITHER):
            return Verdict(False, f"accept is '{self.accept}': needs the upstream"), kept
        return signed, kept

    async def accept_from_peer(self, info: PathInfo) -> tuple[Verdict, PathInfo]:
        """Judge a peer's path info; the info returned keeps only the signatures we trust."""
        signed, kept = self._signed(info)
        if self.accept is Accept.SIGNATURE or (self.accept is Accept.EITHER and signed.ok):
            return signed, kept
        if self.accept is Accept.BOTH and not signed.ok:
            return signed, kept
        upstream = await self.check_upstream(info)
        if self.accept is Accept.UPSTREAM or not upstream.ok and self.accept is Accept.BOTH:
            return upstream, kept
        if self.accept is Accept.BOTH:
            return Verdict(True, f"{signed.reason}; {upstream.reason}"), kept
        return (upstream if upstream.ok else Verdict(False, f"{signed.reason}; {upstream.reason}")), kept

    async def may_serve(self, info: PathInfo) -> Verdict:
        """Whether a peer may have this local path."""
        if pattern := self.excluded(info.store_path.basename):
            return Verdict(False, f"private: matches the exclude pattern {pattern!r}")
        if self.serve is Serve.ALL:
            return Verdict(True, "serving policy is 'all'")
        if sigs := self.trusted_sigs(info):
            return Verdict(True, f"signed by {', '.join(s.partition(':')[0] for s in sigs)}")
        if self.serve is Serve.SIGNED:
            return Verdict(False, f"private: {self._untrusted(info)}")
        upstream = await self.check_upstream(info)
        return upstream if upstream.ok else Verdict(False, f"private: {self._untrusted(info)}, and {upstream.reason}")

    def may_serve_now(self, info: PathInfo) -> bool:
        """`may_serve` without asking the upstream: what a peer may be sent unasked (closure prefetch)."""
        if self.excluded(info.store_path.basename):
            return False
        return self.serve is Serve.ALL or bool(self.trusted_sigs(info))

    def _untrusted(self, info: PathInfo) -> str:
        """Why none of the path's signatures counts, for a path `trusted_sigs` found none on."""
        names = sorted({sig.partition(":")[0] for sig in info.sigs})
        if not names:
            return "no signature by a trusted key (unsigned)"
        if forged := [name for name in names if name in self.trusted_names]:
            return f"no signature by a trusted key (the {', '.join(forged)} signature does not verify)"
        return f"no signature by a trusted key (signed by {', '.join(names)}, not trusted here)"

    def announceable(self, name: str, sigs: tuple[str, ...]) -> bool:
        """A cheap guess at `may_serve` for announcing a path (its name, `<hash>-<name>`, and signatures):
        not excluded, and a trusted key's name, no crypto, no upstream.

        What is announced but refused costs a peer one query; what is served is always fully checked.
        Unsigned paths that upstream would vouch for are served when asked but not announced.
        """
        if self.excluded(name):
            return False
        return self.serve is Serve.ALL or any(sig.partition(":")[0] in self.trusted_names for sig in sigs)
