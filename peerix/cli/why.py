"""`peerix why`: the daemon's explanation of a path, for people."""

from typing import Any


def describe(why: dict[str, Any]) -> str:
    lines = [why["path"] or why["hash"]]
    if why["local"]:
        lines.append("  local: yes, in this host's store")
        if why.get("shared_with_peers") is not None:
            shared = "yes" if why["shared_with_peers"] else "no"
            lines.append(f"  shared with peers: {shared} ({why['sharing_reason']})")
    else:
        lines.append("  local: no")
        for peer in why["peers"]:
            latency = "" if peer["latency_ms"] is None else f" [{peer['latency_ms']} ms]"
            lines.append(f"  peer {peer['peer_id'][:12]} ({peer['source']}): {peer['result']}, {peer['reason']}"
                         f"{latency}")
        if not why["peers"]:
            lines.append("  peers: none known to have it")
    if admission := why.get("admission"):
        lines.append(f"  answers peers: {admission_text(admission)}")
    lines.append(f"  decision: {why['decision']}")
    return "\n".join(lines)


def admission_text(admission: dict[str, Any]) -> str:
    """Whom the host answers over the peer protocols, in a few words."""
    if admission["mode"] == "any":
        return "any peer (peers = any)"
    named = [f"{admission['tracker_members']} tracker members"] if admission.get("tracker_membership") in (
        "allowlist", "token") else []
    named += ["static peers"] + (["LAN peers proving the fleet token"] if admission.get("fleet_token") else [])
    return f"the fleet only (peers = fleet): {', '.join(named)}"
