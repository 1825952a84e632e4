"""The host's dashboard: what is moving now, the last hour, what the network saved, peers and past transfers.

Rendered on the server from the same figures as the JSON endpoints (/api/v1/activity, /api/v1/transfers,
/api/v1/peers); the shared script (common/static/dashboard.js) keeps the live parts current from
/api/v1/activity every second.
"""

from html import escape
from typing import Any

from .. import __version__
from ..common import web
from ..common.units import ago, duration, size_text
from ..telemetry.activity import Activity, Transfer

PER_PAGE = 50
LIVE_EVERY = 1.0  # seconds between polls of /api/v1/activity

MEANINGS = {
    ("fetch", "complete"): "Nix got the whole NAR, and it matched its NarHash",
    ("fetch", "aborted"): "Nix went away before the end (it was stopped, or took the path from another cache)",
    ("fetch", "failed"): "the NAR could not be sent: its peers failed or it did not match its NarHash (see the "
                         "detail); Nix tries again or falls back to another cache",
    ("upload", "complete"): "the peer got every byte it asked this host for",
    ("upload", "stopped"): "the peer stopped this host because another peer had sent that part first: "
                           "not an error",
    ("upload", "failed"): "sending to the peer failed: it went away or stopped reading",
}


def render(activity: Activity, network: dict[str, Any], peers: list[dict[str, Any]], query: dict[str, str],
           now: float) -> str:
    name = network.get("name") or "?"
    recent = web.Paging.of(query, "page", PER_PAGE, len(activity.recent))
    listed = web.Paging.of(query, "peers", PER_PAGE, len(peers))
    tracker = network.get("tracker")
    tracker_text = "none (LAN and static peers only)" if not tracker else (
        f"{tracker['url']}, {tracker.get('announced_paths') or 0} paths announced"
        + (", backing off" if tracker.get("in_backoff") else ""))
    body = f"""<header><h1>peerix on {escape(name)}</h1>
<p>peer <span class="mono">{escape(network.get("peer_id", "")[:16])}</span> &middot; tracker {escape(tracker_text)}
&middot; answers {escape((network.get("admission") or {}).get("mode", "any"))} peers
&middot; counting since {ago(activity.since, now)} &middot; peerix {__version__} &middot;
<span id="live-state" role="status">live figures need JavaScript (or /api/v1/activity)</span></p></header>
<main>
<section aria-label="Totals"><ul class="cards">{_cards(activity)}</ul></section>
<h2 id="in-flight-title">In flight</h2>
{web.table("in-flight", "NARs moving now, updated every second", ["Path", "Progress", "#Moved", "#Rate", "#ETA",
           "From / to"], [], "Shown live with JavaScript (or in /api/v1/activity).",
           ' data-rows="in_flight" data-template="in-flight-row" data-empty="Nothing is moving."')}
<template id="in-flight-row"><tr><td class="path" data-item="path" data-format="name"></td>
<td><progress data-item="bytes" data-max="size" aria-label="progress"></progress></td>
<td class="num"><span data-item="bytes" data-format="size"></span> of
<span data-item="size" data-format="size"></span></td>
<td class="num" data-item="rate" data-format="rate"></td><td class="num" data-item="eta" data-format="span"></td>
<td data-item="." data-format="parties"></td></tr></template>
<h2>The last hour</h2>
<section class="charts" aria-label="Charts of the last hour">
{web.chart("history.to_nix", "To Nix", "rate")}{web.chart("history.from_peers", "From peers", "rate")}
{web.chart("history.to_peers", "To peers", "rate")}{web.chart("history.from_upstream", "From the upstream", "rate")}
{web.chart("history.hit_ratio", "Narinfo hit ratio", "percent", top=1)}
</section>
<section id="recent" data-refresh>
<h2>Recent transfers</h2>
{web.table("transfers", "One row per NAR: to Nix with the sources it came from, or to a peer with its pieces",
           ["When", "Path", "To", "From", "#Size", "#Moved", "#Speed", "Status", "Detail"],
           [_transfer_row(t) for t in activity.recent_page(recent.offset, PER_PAGE)], "No transfers yet.")}
{recent.nav("Recent transfers", query)}
<details><summary>What the statuses mean</summary>{web.legend(_legend())}</details>
</section>
<section id="known-peers" data-refresh>
<h2>Peers ({len(peers):,})</h2>
{web.table("peers", "The peers this host knows, from the LAN and the tracker",
           ["Name", "Source", "Peer", "Addresses", "Last seen", "Answered", "Reputation"],
           [_peer_row(p, now) for p in peers[listed.offset:listed.offset + PER_PAGE]], "No peers known yet.")}
{listed.nav("Peers", query)}
</section>
</main>"""
    return web.page(f"peerix on {name}", body, live="/api/v1/activity", every=LIVE_EVERY,
                    refresh_on="totals.fetches,totals.uploads")


def _cards(activity: Activity) -> str:
    totals, saved = activity.totals, activity.saved()
    ratio = activity.hit_ratio
    if saved["upstream_rate"]:
        how_long = (f'&asymp; <span data-field="saved.seconds" data-format="span">{duration(saved["seconds"])}</span> '
                    f'at the upstream\'s <span data-field="saved.upstream_rate" data-format="rate">'
                    f'{size_text(saved["upstream_rate"])}/s</span> ({saved["rate_source"]})')
    else:
        how_long = "upstream rate unknown: set upstream_rate, or pull a path through"
    saved_card = (
        '<li class="card wide" title="Bytes Nix got from peers, lease holders included, instead of the upstream '
        'cache; the time is what they would have taken at the upstream\'s rate">'
        '<div class="label">Saved: from peers instead of the upstream</div>'
        f'<div class="value" id="saved" data-field="totals.bytes_saved" data-format="size">'
        f'{size_text(totals["bytes_saved"])}</div><div class="label" id="saved-time">{how_long}</div></li>')
    cards = [
        ("served-to-nix", "Served to Nix", size_text(totals["bytes_to_nix"]), "totals.bytes_to_nix", "size"),
        ("fetched-from-peers", "Fetched from peers", size_text(totals["bytes_from_peers"]), "totals.bytes_from_peers",
         "size"),
        ("served-to-peers", "Served to peers", size_text(totals["bytes_to_peers"]), "totals.bytes_to_peers", "size"),
        ("fetched-from-upstream", "Fetched from upstream", size_text(totals["bytes_from_upstream"]),
         "totals.bytes_from_upstream", "size"),
        ("hit-ratio", "Narinfo hit ratio", "-" if ratio is None else f"{ratio:.0%}", "hit_ratio", "percent"),
        ("fetches", "Fetches by Nix", f"{totals['fetches']:,}", "totals.fetches", "count"),
        ("fetches-failed", "Fetches failed", f"{totals['fetches_failed']:,}", "totals.fetches_failed", "count"),
        ("uploads", "Uploads to peers", f"{totals['uploads']:,}", "totals.uploads", "count"),
        ("verification-failures", "Verification failures", f"{totals['verification_failures']:,}",
         "totals.verification_failures", "count"),
        ("lease-waits", "Lease waits", f"{totals['lease_waits']:,}", "totals.lease_waits", "count"),
        ("lease-takeovers", "Lease takeovers", f"{totals['lease_takeovers']:,}", "totals.lease_takeovers", "count"),
        ("logs-served", "Build logs served", f"{totals['logs_served']:,}", "totals.logs_served", "count"),
        ("listings-served", "Listings served", f"{totals['listings_served']:,}", "totals.listings_served", "count"),
        ("realisations-served", "Realisations served", f"{totals['realisations_served']:,}",
         "totals.realisations_served", "count"),
        ("peers-refused", "Peer requests refused", f"{totals['peers_refused']:,}", "totals.peers_refused", "count"),
    ]
    return saved_card + "".join(web.card(*card) for card in cards)


def _transfer_row(t: Transfer) -> str:
    if t.kind == "fetch":
        to = "Nix"
        total = sum(count for _, _, count in t.sources) or 1
        sources = ", ".join(f"{name} {count * 100 // total}%" for _, name, count in t.sources)
        if len(t.sources) == 1:
            sources = t.sources[0][1]
    else:
        to, sources = f"peer {t.name or t.peer[:10]}", "this host"
    meaning = MEANINGS.get((t.kind, t.outcome), t.outcome)
    cells = [escape(web.clock(t.started)), f'<span class="path" title="{escape(t.path)}">'
             f'{escape(t.path.rpartition("/")[2])}</span>', escape(to), escape(sources or "-"),
             size_text(t.size), size_text(t.bytes), f"{size_text(t.bytes / max(t.seconds, 1e-3))}/s",
             web.status(t.outcome, meaning), escape(t.detail or "-")]
    return "<tr>" + "".join(f'<td{" class=num" if i in (4, 5, 6) else ""}>{c}</td>'
                            for i, c in enumerate(cells)) + "</tr>"


def _peer_row(peer: dict[str, Any], now: float) -> str:
    addresses = "<br>".join(escape(a) for a in peer["direct_addresses"]) or escape(peer.get("relay_url") or "-")
    cells = [escape(peer.get("name") or "?"), escape(peer["source"]),
             f'<span class="mono" title="{escape(peer["peer_id"])}">{escape(peer["peer_id"][:12])}</span>',
             f'<span class="addresses">{addresses}</span>', escape(ago(peer.get("last_seen"), now)),
             escape(admitted_text(peer.get("admitted"))), escape(reputation_text(peer.get("reputation")))]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def admitted_text(admitted: str | None) -> str:
    """Whether this host answers the peer, and why (the `admitted` of /api/v1/peers)."""
    return "no: not in the fleet" if admitted is None else "yes" if admitted == "any" else f"yes ({admitted})"


def _legend() -> dict[str, str]:
    merged: dict[str, list[str]] = {}
    for (kind, outcome), meaning in MEANINGS.items():
        merged.setdefault(outcome, []).append(f"{'to Nix' if kind == 'fetch' else 'to a peer'}: {meaning}")
    return {outcome: "; ".join(meanings) for outcome, meanings in merged.items()}


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
