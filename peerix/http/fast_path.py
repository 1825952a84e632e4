"""What the fast-path listener serves: `/store/`'s NARs to peers holding a ticket for the path, and
nothing else.

It listens on the network, where the main listener may listen on loopback only; the ticket is what
the iroh side gave a peer it admitted (net/fast_path.py), so a stranger who finds the port gets a 403
for any path, whatever the serving policy would let `/store/` show it.
"""

import logging
import re
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from ..common.asgi import plain
from ..net.fast_path import TICKET_HEADER, Tickets
from ..telemetry.metrics import Metrics

log = logging.getLogger(__name__)

SCOPE_KEY = "peerix.fast_path"  # the peer a request it lets through comes from
_NAR = re.compile(r"/store/nar/[^/]+\.nar")
_HEADER = TICKET_HEADER.encode()


def fast_path_app(app: ASGIApp, tickets: Tickets, metrics: Metrics) -> ASGIApp:
    async def gate(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        peer_or_refusal = _holder(scope, tickets)
        if isinstance(peer_or_refusal, tuple):
            status, reason, text = peer_or_refusal
            metrics.fast_path_refused.labels(reason).inc()
            client = scope.get("client")
            log.info("fast path refused client=%s path=%s reason=%s", client[0] if client else "?",
                     scope["path"][:100], reason)
            return await plain(status, text)(scope, receive, send)
        scope[SCOPE_KEY] = peer_or_refusal
        await app(scope, receive, send)

    return gate


def _holder(scope: Scope, tickets: Tickets) -> str | tuple[int, str, str]:
    """The peer the request's ticket was issued to; (status, metric reason, text) for a request the fast
    path does not serve."""
    if scope["method"] not in ("GET", "HEAD") or not _NAR.fullmatch(scope["path"]):
        return 404, "not-a-nar", "the fast path serves NARs to peers only (/store/nar/<narhash>.nar?hash=...)"
    hash_part = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("hash", [""])[0]
    ticket = next((value for name, value in scope["headers"] if name == _HEADER), b"").decode("latin-1")
    if not ticket:
        return 403, "no-ticket", f"no {TICKET_HEADER} header: ask for the NAR over iroh first"
    peer = tickets.holder(ticket, hash_part)
    if peer is None:
        return 403, "bad-ticket", "the ticket is expired or for another path: ask for the NAR over iroh again"
    return peer
