"""The host's dashboard: one server-rendered page, no external assets, refreshed every 5 s."""

import html
import time
from typing import Any

from .. import __version__
from ..common.units import ago, duration, size_text
from ..telemetry.activity import Activity


def reputation_text(rep: dict[str, Any] | None) -> str:
    if rep is None:
        return "-"
    text = f"{rep['successes']} ok, {rep['failures']} failed"
    if rep.get("latency_ms") is not None:
        text += f", {rep['latency_ms']} ms"
    left = duration(rep.get("not_asked_for_s") or 0)
    if rep.get("banned"):
        text += f"; banned for {left}: {rep.get('ban_reason') or 'sent wrong bytes'}"
    elif rep.get("backing_off"):
        text += f"; backing off for {left}: {rep.get('last_error') or 'failed'}"
    return text


def admitted_text(admitted: str | None) -> str:
    """Whether this host answers the peer, and why (the `admitted` of /api/v1/peers)."""
    return "no: not in the fleet" if admitted is None else "yes" if admitted == "any" else f"yes ({admitted})"


def _table(headers: tuple[str, ...], rows: list[tuple[str, ...]], empty: str, table_id: str) -> str:
    if not rows:
        return f'<p class="empty" id="{table_id}">{html.escape(empty)}</p>'
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render(activity: Activity, network: dict[str, Any], peers: list[dict[str, Any]]) -> str:
    now = time.time()
    totals = activity.totals
    ratio = activity.hit_ratio
    cards = [
        ("served-to-nix", "Served to Nix", size_text(totals["bytes_to_nix"])),
        ("served-to-peers", "Served to peers", size_text(totals["bytes_to_peers"])),
        ("fetched-from-peers", "Fetched from peers", size_text(totals["bytes_from_peers"])),
        ("hit-ratio", "Narinfo hit ratio", "-" if ratio is None else f"{ratio:.0%}"),
        ("verification-failures", "Verification failures", f"{totals['verification_failures']:,}"),
        ("transfers", "Transfers (failed)", f"{totals['transfers_complete']:,} ({totals['transfers_failed']:,})"),
        ("fetched-from-upstream", "Fetched from upstream", size_text(totals["bytes_from_upstream"])),
        ("saved-from-upstream", "Upstream bytes saved", size_text(totals["bytes_saved_from_upstream"])),
        ("lease-waits", "Lease waits (takeovers)", f"{totals['lease_waits']:,} ({totals['lease_takeovers']:,})"),
        ("logs-served", "Build logs served", f"{totals['logs_served']:,}"),
        ("listings-served", "Listings served", f"{totals['listings_served']:,}"),
        ("realisations-served", "Realisations served", f"{totals['realisations_served']:,}"),
        ("peers-refused", "Peer requests refused", f"{totals['peers_refused']:,}"),
    ]
    card_html = "".join(f'<div class="card"><div class="label">{label}</div>'
                        f'<div class="value" id="{key}">{html.escape(value)}</div></div>'
                        for key, label, value in cards)
    peer_rows = [(p.get("name") or "?", p["source"], p["peer_id"][:12],
                  ", ".join(p["direct_addresses"]) or p.get("relay_url") or "-",
                  ago(p.get("last_seen"), now), admitted_text(p.get("admitted")),
                  reputation_text(p.get("reputation"))) for p in peers]
    transfer_rows = [(ago(t.at, now), t.direction, t.path, t.peer or "-", size_text(t.bytes), f"{t.rate:.1f} MiB/s",
                      t.outcome, t.detail or "-") for t in activity.recent]
    tracker = network.get("tracker")
    tracker_text = "none (LAN and static peers only)" if not tracker else (
        f"{tracker['url']}, {tracker.get('announced_paths') or 0} paths announced"
        + (", backing off" if tracker.get("in_backoff") else ""))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>peerix on {html.escape(network.get("name") or "")}</title>
<style>{_CSS}</style></head><body>
<header><h1>peerix on {html.escape(network.get("name") or "?")}</h1>
<p>peer {html.escape(network.get("peer_id", "")[:16])} &middot; tracker {html.escape(tracker_text)}
&middot; answers {html.escape((network.get("admission") or {}).get("mode", "any"))} peers
&middot; counting since {ago(activity.since, now)} &middot; peerix {__version__}</p></header>
<section class="cards">{card_html}</section>
<h2>Peers ({len(peers)})</h2>
{_table(("name", "source", "peer", "addresses", "last seen", "answered", "reputation"), peer_rows,
        "No peers known yet.", "peers")}
<h2>Recent transfers</h2>
{_table(("when", "direction", "path", "peer", "size", "speed", "result", "detail"), transfer_rows, "No transfers yet.",
        "transfers")}
</body></html>"""


_CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#1d2433;background:#f6f7f9}
h1{font-size:1.4em;margin:0}header p{color:#667085;margin:.3em 0 1.5em}
.cards{display:flex;flex-wrap:wrap;gap:1em}.card{background:#fff;border:1px solid #e3e6eb;border-radius:8px;
padding:.8em 1.2em;min-width:11em}.label{color:#667085;font-size:.85em}.value{font-size:1.5em;font-weight:600}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #e3e6eb}th,td{text-align:left;
padding:.4em .7em;border-bottom:1px solid #eef0f3;font-variant-numeric:tabular-nums}th{background:#f0f2f5}
h2{font-size:1.1em;margin-top:2em}.empty{color:#667085}"""
