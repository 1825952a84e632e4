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
    lines.append(f"  decision: {why['decision']}")
    return "\n".join(lines)
