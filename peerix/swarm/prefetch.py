"""Closure prefetch: a narinfo answer carries the narinfos of the path's references that the peer
also holds, so Nix's next questions about the closure cost no round trip to the peer.

Bounded on both sides: the sender adds at most MAX_COUNT narinfos and MAX_BYTES of them, and only
what its serving policy settles without asking the upstream; the receiver keeps only narinfos of
the asked path's own references that a trusted signature makes acceptable (a peer cannot make a
host cache paths it never asked about, nor make it ask the upstream), for a short time.
"""

import logging

from ..nix.narinfo import NarInfo, NarInfoError, PathInfo
from ..store.substituter import Substituter, Unavailable, narinfo_text
from .policy import Policy, Verdict

log = logging.getLogger(__name__)

MAX_COUNT = 256  # narinfos added to one answer
MAX_BYTES = 256 << 10  # of narinfo text added to one answer


async def held_references(substituter: Substituter, policy: Policy, info: PathInfo) -> list[str]:
    """Narinfo texts of the path's references this host holds and would serve to anyone, within the bounds."""
    texts: list[str] = []
    size = 0
    for reference in info.references:
        if reference == info.store_path or len(texts) == MAX_COUNT:
            continue
        try:
            held = await substituter.path_info(reference.hash_part)
        except Unavailable:
            break
        if held is None or not policy.may_serve_now(held):
            continue
        text = narinfo_text(held).decode()
        if size + len(text) > MAX_BYTES:
            break
        texts.append(text)
        size += len(text)
    return texts


def accept_prefetched(policy: Policy, asked: PathInfo, texts: object) -> tuple[list[tuple[PathInfo, Verdict]], int]:
    """The narinfos a peer added to its answer for `asked` that may be used as if asked for, and how many
    were refused (malformed, not a reference of `asked`, or without a trusted signature)."""
    if not isinstance(texts, list):
        return [], 0
    references = {ref for ref in asked.references if ref != asked.store_path}
    accepted, refused = [], 0
    for text in texts[:MAX_COUNT]:
        try:
            info = NarInfo.parse(text) if isinstance(text, str) else None
        except NarInfoError:
            info = None
        verdict, kept = policy.accept_by_signature(info) if info and info.store_path in references else (None, None)
        if verdict is None or not verdict.ok:
            refused += 1
            log.debug("prefetched narinfo refused for=%s reason=%s", asked.store_path,
                      verdict.reason if verdict else "not a reference of the path asked for")
            continue
        references.discard(kept.store_path)  # once each
        accepted.append((kept, verdict))
    return accepted, refused
