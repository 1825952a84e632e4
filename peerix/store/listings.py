"""NAR listings to serve as `<hash>.ls`: this host's paths listed from their trees, peers' paths only
once proven, that is parsed from a NAR that matched its NarHash on its way to Nix through this host.
A listing nobody checked could make `nix store cat` read wrong bytes, so there is no other way in.

A listing depends on nothing but the NAR, so they are kept by NarHash (rendered, least recently used
out past a byte budget) whichever path they came from.
"""

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from ..nix.listing import ListingParser, NarFormatError, render

log = logging.getLogger(__name__)

BUDGET = 64 << 20  # bytes of rendered listings kept
MAX_LAG = 64 << 20  # bytes a proof may fall behind its NAR before it is given up (rather than held)


class Listings:
    def __init__(self, budget: int = BUDGET) -> None:
        self.budget = budget
        self._entries: OrderedDict[bytes, bytes] = OrderedDict()
        self._total = 0
        self._prover = ThreadPoolExecutor(max_workers=1, thread_name_prefix="listing-prover")

    def get(self, nar_hash: bytes) -> bytes | None:
        text = self._entries.get(nar_hash)
        if text is not None:
            self._entries.move_to_end(nar_hash)
        return text

    def put(self, nar_hash: bytes, text: bytes) -> None:
        if nar_hash in self._entries or len(text) > self.budget:
            return
        self._entries[nar_hash] = text
        self._total += len(text)
        while self._total > self.budget:
            self._total -= len(self._entries.popitem(last=False)[1])

    async def proving(self, chunks: AsyncIterator[bytes], nar_hash: bytes) -> AsyncIterator[bytes]:
        """Pass a peer's verified NAR through, parsing it on a thread of its own: when it ends whole
        (the transfer raises before its last chunk unless the NAR matched its NarHash), its listing
        is proven and kept. Cut short, failed or unparsable, nothing is kept."""
        proof = _Proof()
        submitted, last = 0, None
        async with contextlib.aclosing(chunks):  # type: ignore[type-var]
            async for chunk in chunks:
                if not proof.given_up:
                    if submitted - proof.parsed > MAX_LAG:
                        proof.given_up = True  # the parser cannot keep up: not worth the memory
                        log.info("not listing a NAR: its parser fell behind at byte %d", proof.parsed)
                    else:
                        submitted += len(chunk)
                        last = self._prover.submit(proof.feed, chunk)
                yield chunk
        if last is not None and not proof.given_up:
            text = await asyncio.wrap_future(self._prover.submit(proof.result))
            if text is not None:
                self.put(nar_hash, text)

    def close(self) -> None:
        self._prover.shutdown(wait=False, cancel_futures=True)


class _Proof:
    """One NAR's parse, fed on the prover thread in the order the chunks came."""

    def __init__(self) -> None:
        self.parser = ListingParser()
        self.parsed = 0  # written by the prover thread only
        self.given_up = False
        self.error: NarFormatError | None = None

    def feed(self, chunk: bytes) -> None:
        if self.error is None and not self.given_up:
            try:
                self.parser.feed(chunk)
            except NarFormatError as error:
                self.error = error
        self.parsed += len(chunk)

    def result(self) -> bytes | None:
        try:
            if self.error is not None:
                raise self.error
            return render(self.parser.result())
        except NarFormatError as error:  # a NAR that matched its NarHash, yet Nix would not unpack it
            log.warning("a verified NAR does not parse error=%s", error)
            return None
