"""Who may do what: request signatures, the replay cache and membership (open, allowlist, token).

Every write is signed by the peer it changes (see peerix.net.tracker_protocol): its timestamp must
lie within `max_clock_skew` of the tracker's clock and its nonce must be new. The storage remembers
nonces until their timestamp goes stale (`replay_key`), so that replicas sharing a database refuse a
replay whichever of them it reaches; requests signed before the tracker started are refused too,
since a restart of an SQLite tracker, which keeps them in memory, would reopen the window for
requests captured just before it.

Reads are open to anyone under `open` membership. Under `allowlist` or `token` they need what a
write needs to get in (a signature by a listed key, or a token), so a private fleet does not tell
strangers which machines hold what and where they listen. The signature is verified before the
allowlist is consulted, so a forged request is 401 whatever id it names: the answers do not reveal
which ids are listed. Reads are not replay-checked: replaying
one reveals nothing the eavesdropper did not already see.
"""

import hmac
import math
from collections.abc import Mapping

from peerix.net.tracker_protocol import TOKEN_SCHEME, Signature

from .model import ApiError


class Authenticator:
    def __init__(self, membership: str, allowlist: frozenset[str], tokens: tuple[str, ...],
                 max_clock_skew: float, started_at: float) -> None:
        self.membership = membership
        self.allowlist = allowlist
        self._tokens = [token.encode() for token in tokens]
        self.max_clock_skew = max_clock_skew
        self._not_before = math.floor(started_at)

    def authenticate(self, method: str, path: str, headers: Mapping[str, str], body: bytes, now: float,
                     write: bool) -> Signature | None:
        """The verified signature (None for an anonymous read); ApiError when the request is refused. A
        write's nonce is checked afterwards, with the storage (`replay_key`)."""
        if self.membership == "token":
            self._check_token(headers.get("authorization", ""))
        if not write and self.membership != "allowlist":
            return None
        try:
            signature = Signature.from_headers(headers)
        except ValueError as error:
            raise ApiError(401, "unauthenticated", f"malformed signature headers: {error}") from None
        if signature is None:
            raise ApiError(401, "unauthenticated", "this request must be signed by the peer's key "
                           "(X-Peerix-Peer, X-Peerix-Timestamp, X-Peerix-Nonce, X-Peerix-Signature)")
        skew = self.max_clock_skew
        if not max(now - skew, self._not_before) <= signature.timestamp <= now + skew:
            raise ApiError(401, "stale_timestamp", f"timestamp {signature.timestamp} is not within {skew:g} s of "
                           f"the tracker's clock ({now:.0f}) or predates its start; sign the request again")
        if not signature.verify(method, path, body):
            raise ApiError(401, "bad_signature", "the signature does not match the request and the peer's key")
        # Membership only after the signature: otherwise a forgery naming a listed id (401) and one naming
        # an unlisted id (403) would tell a stranger who is on the allowlist.
        if self.membership == "allowlist" and signature.peer_id not in self.allowlist:
            raise ApiError(403, "not_member", f"peer {signature.peer_id} is not on this tracker's allowlist")
        return signature

    def admitted(self, peer_id: str) -> bool:
        """Whether a peer the tracker holds is still a member (under allowlist: still listed)."""
        return self.membership != "allowlist" or peer_id in self.allowlist

    def update(self, allowlist: frozenset[str], tokens: tuple[str, ...]) -> None:
        """New members (a reload of the allowlist and token files)."""
        self.allowlist = allowlist
        self._tokens = [token.encode() for token in tokens]

    def replay_key(self, signature: Signature) -> tuple[bytes, float]:
        """What the storage remembers of a write to refuse its replay, and until when: after that, the
        request is refused as stale anyway."""
        return bytes.fromhex(signature.peer_id + signature.nonce), signature.timestamp + self.max_clock_skew

    def _check_token(self, authorization: str) -> None:
        scheme, _, token = authorization.partition(" ")
        if scheme != TOKEN_SCHEME or not token:
            raise ApiError(401, "unauthenticated", f"this tracker needs a network token: Authorization: "
                           f"{TOKEN_SCHEME} <token>")
        offered = token.strip().encode()
        if not any(hmac.compare_digest(offered, known) for known in self._tokens):
            raise ApiError(403, "not_member", "the network token is not valid here")

