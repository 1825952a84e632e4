"""The dashboard at `/`: one server-rendered page for people, pure HTML and inline CSS.

No scripts and no external assets, so it works offline and under a Content-Security-Policy that
forbids both; it reloads itself every 10 seconds. Everything a peer chose (its name, addresses)
is escaped: a peer must not be able to put markup on the operator's screen.
"""

import time
from dataclasses import dataclass
from html import escape

from .model import Peer
from .storage import Counts

REFRESH_SECONDS = 10
CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


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
    announces_per_second: float
    lookups_per_second: float
    sweep: dict


def render(snap: Snapshot) -> str:
    peers = sorted(snap.peers, key=lambda item: (not item[1], -item[0].last_seen, item[0].name))
    counts = snap.counts
    totals = [
        ("peers-online", "Peers online", f"{counts.peers_online:,}"),
        ("peers-offline", "Peers offline", f"{counts.peers_offline:,}"),
        ("paths", "Store paths", f"{counts.paths:,}"),
        ("holdings", "Holdings", f"{counts.holdings:,}"),
        ("announce-rate", "Announces / min (this replica)", f"{snap.announces_per_second * 60:,.1f}"),
        ("lookup-rate", "Lookups / min (this replica)", f"{snap.lookups_per_second * 60:,.1f}"),
    ]
    cards = "".join(f'<div class="card" id="{key}"><div class="value">{value}</div><div class="label">{label}</div>'
                    f"</div>" for key, label, value in totals)
    rows = "".join(_row(peer, is_online, snap.now) for peer, is_online in peers)
    if not rows:
        rows = '<tr><td colspan="6" class="empty">No peer has announced yet.</td></tr>'
    sweep = snap.sweep
    last_sweep = _ago(snap.now - sweep["last_run"]) if sweep["last_run"] else "not yet"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>peerix tracker</title>
<style>{_STYLE}</style>
</head>
<body>
<header><h1>peerix tracker</h1><span class="muted">{_utc(snap.now)}</span></header>
<section class="cards">{cards}</section>
<table id="peers">
<thead><tr><th>Status</th><th>Name</th><th>Peer id</th><th>Addresses</th><th class="num">Paths</th>\
<th>Last seen</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
<footer id="footer" class="muted">peerix-tracker {escape(snap.version)} · replica {escape(snap.replica)} ·
membership {escape(snap.membership)} ·
offline after {_duration(snap.offline_after)}, removed after {_duration(snap.remove_after)} ·
last sweep {last_sweep} ({escape(sweep["status"])})</footer>
</body>
</html>
"""


def _row(peer: Peer, is_online: bool, now: float) -> str:
    state = "online" if is_online else "offline"
    addresses = peer.addresses
    lines = [*addresses.direct]
    if addresses.relay_url:
        lines.append(f"relay {addresses.relay_url}")
    if addresses.http_url:
        lines.append(f"http {addresses.http_url}")
    shown = "<br>".join(escape(line) for line in lines) or '<span class="muted">none</span>'
    return (f'<tr class="{state}"><td><span class="badge {state}">{state}</span></td>'
            f'<td class="name">{escape(peer.name)}</td>'
            f'<td class="id" title="{peer.peer_id}">{peer.peer_id[:16]}…</td>'
            f'<td class="addresses">{shown}</td><td class="num">{peer.paths:,}</td>'
            f'<td title="{_utc(peer.last_seen)}">{_ago(now - peer.last_seen)}</td></tr>\n')


def _ago(seconds: float) -> str:
    return f"{_duration(max(seconds, 0))} ago"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _utc(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2rem;color:#1d2433;background:#f6f7f9}
header{display:flex;align-items:baseline;gap:1rem}h1{font-size:1.4rem;margin:0 0 1rem}
.cards{display:flex;flex-wrap:wrap;gap:.75rem;margin-bottom:1.25rem}
.card{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:.6rem 1rem;min-width:9rem}
.value{font-size:1.5rem;font-weight:600}.label,.muted{color:#667085}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #dde1e8}
th,td{padding:.45rem .7rem;border-bottom:1px solid #eceff3;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}.num{text-align:right}.id{font-family:ui-monospace,monospace}
.addresses{font-family:ui-monospace,monospace;font-size:12px}
tr.offline{color:#8a93a3}.empty{text-align:center;color:#667085}
.badge{border-radius:4px;padding:.1rem .45rem;font-size:12px;font-weight:600}
.badge.online{background:#dcf5e3;color:#146c2e}.badge.offline{background:#eceff3;color:#667085}
footer{margin-top:1rem;font-size:12px}
"""
