"""The dashboard: the fleet at `/` (paged), who holds a path at `/search`, one peer at `/peers/<id>`.

Pages are rendered on the server, with the shared stylesheet and script of peerix.common.web (nothing
from elsewhere: the Content-Security-Policy allows this tracker's own files only). The script keeps the
counts and the charts of the last hour current from /api/v1/stats; every figure here is in a JSON
endpoint too (/api/v1/stats, /api/v1/peers, /api/v1/peers/<id>, /api/v1/lookup/<hash>). Everything a
peer chose (its name, addresses) is escaped: a peer must not be able to put markup on the operator's
screen.
"""

import time
from dataclasses import dataclass
from html import escape

from peerix.common import web
from peerix.nix.storepath import is_hash_part

from .model import Peer
from .storage import Counts

PER_PAGE = 100
LIVE_EVERY = 15.0  # seconds between polls of /api/v1/stats


@dataclass(frozen=True)
class Snapshot:
    now: float
    version: str
    replica: str  # the one answering: counts come from the database, rates are this replica's
    membership: str
    offline_after: float
    remove_after: float
    peers: list[tuple[Peer, bool]]  # each peer with whether it is online
    counts: Counts
    announces_per_minute: float
    lookups_per_minute: float
    sweep: dict


def render(snap: Snapshot, query: dict[str, str]) -> str:
    peers = sorted(snap.peers, key=lambda item: (not item[1], -item[0].last_seen, item[0].name))
    paging = web.Paging.of(query, "page", PER_PAGE, len(peers))
    counts = snap.counts
    cards = "".join(web.card(*card) for card in (
        ("peers-online", "Peers online", f"{counts.peers_online:,}", "counts.peers_online", "count"),
        ("peers-offline", "Peers offline", f"{counts.peers_offline:,}", "counts.peers_offline", "count"),
        ("paths", "Store paths", f"{counts.paths:,}", "counts.paths", "count"),
        ("holdings", "Holdings", f"{counts.holdings:,}", "counts.holdings", "count",
         "pairs of a peer and a path it holds"),
        ("announce-rate", "Announces / min (this replica)", f"{snap.announces_per_minute:,.1f}",
         "per_minute.announces", "decimal", "over the last 5 minutes"),
        ("lookup-rate", "Lookups / min (this replica)", f"{snap.lookups_per_minute:,.1f}", "per_minute.lookups",
         "decimal", "over the last 5 minutes"),
    ))
    rows = [_row(peer, online, snap.now) for peer, online in peers[paging.offset:paging.offset + PER_PAGE]]
    body = f"""{_header(snap.now, live=True)}
<main>
{_search_form("")}
<section aria-label="Totals"><ul class="cards">{cards}</ul></section>
<h2>The last hour</h2>
<section class="charts" aria-label="Charts of the last hour">
{web.chart("history.peers_online", "Peers online", "count")}
{web.chart("history.announces", "Announces per minute (this replica)", "count")}
{web.chart("history.lookups", "Lookups per minute (this replica)", "count")}
</section>
<h2>Peers ({len(peers):,})</h2>
{paging.nav("Peers", query)}
{_peers_table(rows, "Every peer: online first, most recently seen first", "No peer has announced yet.")}
{paging.nav("Peers", query)}
</main>
{_footer(snap)}"""
    return web.page("peerix tracker", body, live="/api/v1/stats", every=LIVE_EVERY)


def search_hash(text: str) -> str | None:
    """The hash part of what a person typed: a store path, its base name, or the hash itself."""
    name = text.strip().rstrip("/").rpartition("/")[2]
    return name[:32] if is_hash_part(name[:32]) and (len(name) == 32 or name[32:33] == "-") else None


def render_search(text: str, hash_part: str | None, holders: list[Peer], now: float) -> str:
    if not text.strip():
        result = '<p class="muted">Type a store path or its hash.</p>'
    elif hash_part is None:
        result = (f'<p role="alert">Not a store path or hash: <span class="mono">{escape(text[:200])}</span>. '
                  "A store path looks like /nix/store/&lt;32 characters&gt;-name.</p>")
    else:
        caption = (f"{len(holders):,} online peer{'s' * (len(holders) != 1)} hold {hash_part} "
                   f"(the answer of /api/v1/lookup/{hash_part})")
        result = _peers_table([_row(peer, True, now) for peer in holders], caption,
                              "No online peer holds this path.", "holders")
    body = f"""{_header(now)}
<main>
<p><a href="/">&larr; the fleet</a></p>
{_search_form(text)}
<section id="result" aria-live="polite">{result}</section>
</main>"""
    return web.page("who has it: peerix tracker", body)


def render_peer(peer: Peer, online: bool, now: float) -> str:
    state = "online" if online else "offline"
    addresses = peer.addresses
    facts = [
        ("Name", escape(peer.name)),
        ("State", web.status(state, _STATES[state])),
        ("Peer id", f'<span class="mono">{peer.peer_id}</span>'),
        ("Direct addresses", _addresses(list(addresses.direct)) or '<span class="muted">none</span>'),
        ("Relay", escape(addresses.relay_url or "none")),
        ("HTTP", escape(addresses.http_url or "none")),
        ("Process", escape(addresses.incarnation or "not said") + ' <span class="muted">(changes when the daemon '
                                                                  "restarts)</span>"),
        ("Paths", f"{peer.paths:,}"),
        ("First seen", f"{web.clock(peer.first_seen)} ({_ago(now - peer.first_seen)})"),
        ("Last seen", f"{web.clock(peer.last_seen)} ({_ago(now - peer.last_seen)})"),
        ("Departed", web.clock(peer.departed) if peer.departed else "no"),
    ]
    items = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in facts)
    body = f"""{_header(now)}
<main>
<p><a href="/">&larr; the fleet</a> &middot; as JSON: <a href="/api/v1/peers/{peer.peer_id}">/api/v1/peers/…</a></p>
<h2 id="peer-name">{escape(peer.name)}</h2>
<dl class="legend" id="peer">{items}</dl>
</main>"""
    return web.page(f"{peer.name}: peerix tracker", body)


_STATES = {"online": "heard from within the offline TTL: lookups name it",
           "offline": "silent for longer than the offline TTL, or departed: lookups leave it out"}


def _header(now: float, live: bool = False) -> str:
    state = ' &middot; <span id="live-state" role="status"></span>' if live else ""
    return f"<header><h1>peerix tracker</h1><p>{_utc(now)}{state}</p></header>"


def _search_form(text: str) -> str:
    return (f'<form class="search" action="/search" method="get" role="search"><label for="q">Who has</label>'
            f'<input id="q" name="q" value="{escape(text)}" placeholder="/nix/store/… or a hash" required>'
            "<button>Search</button></form>")


def _peers_table(rows: list[str], caption: str, empty: str, table_id: str = "peers") -> str:
    return web.table(table_id, caption, ["Status", "Name", "Peer id", "Addresses", "#Paths", "Last seen"], rows,
                     empty)


def _row(peer: Peer, online: bool, now: float) -> str:
    state = "online" if online else "offline"
    addresses = peer.addresses
    lines = _addresses([*addresses.direct, *([f"relay {addresses.relay_url}"] if addresses.relay_url else []),
                        *([f"http {addresses.http_url}"] if addresses.http_url else [])])
    return (f'<tr class="{state}"><td>{web.status(state, _STATES[state])}</td>'
            f'<td><a href="/peers/{peer.peer_id}">{escape(peer.name)}</a></td>'
            f'<td class="mono" title="{peer.peer_id}">{peer.peer_id[:16]}…</td>'
            f'<td class="addresses">{lines or "<span class=muted>none</span>"}</td><td class="num">{peer.paths:,}</td>'
            f'<td title="{_utc(peer.last_seen)}">{_ago(now - peer.last_seen)}</td></tr>\n')


def _addresses(lines: list[str]) -> str:
    return "<br>".join(escape(line) for line in lines)


def _footer(snap: Snapshot) -> str:
    sweep = snap.sweep
    last_sweep = _ago(snap.now - sweep["last_run"]) if sweep["last_run"] else "not yet"
    return f"""<footer id="footer">peerix-tracker {escape(snap.version)} · replica {escape(snap.replica)} ·
membership {escape(snap.membership)} ·
offline after {_duration(snap.offline_after)}, removed after {_duration(snap.remove_after)} ·
last sweep {last_sweep} ({escape(sweep["status"])})</footer>"""


def _ago(seconds: float) -> str:
    return f"{_duration(max(seconds, 0))} ago"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _utc(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))
