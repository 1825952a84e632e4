"""`peerix why`: what would happen if Nix asked for a path now, and why.

The daemon builds the explanation (`explain`, served at /api/v1/why/<hash>); the CLI prints it
(`describe`). Asking changes nothing: no cache entries, no reputation.
"""

from typing import Any

from .store.policy import Policy
from .store.substituter import Substituter


async def explain(substituter: Substituter, policy: Policy | None, hash_part: str) -> dict[str, Any]:
    local = await substituter.path_info(hash_part)
    if local is not None:
        sharing = await policy.may_serve(local) if policy else None
        return {
            "hash": hash_part, "path": local.store_path.full(local.store_dir), "local": True,
            "decision": "substituted from this host's store",
            "shared_with_peers": None if sharing is None else sharing.ok,
            "sharing_reason": None if sharing is None else sharing.reason,
            "peers": [],
        }
    if substituter.remote is None:
        return {"hash": hash_part, "path": None, "local": False, "peers": [],
                "decision": "not found: not in this host's store, and no peer network"}
    answers = await substituter.remote.explain(hash_part)
    peers = [{
        "peer_id": answer.candidate.peer_id, "source": answer.candidate.source, "result": answer.result,
        "reason": answer.detail, "latency_ms": round(answer.latency * 1000, 1),
    } for answer in answers]
    accepted = [answer for answer in answers if answer.result == "ok"]
    path = next((a.info.store_path.full(a.info.store_dir) for a in accepted if a.info), None)
    if accepted:
        decision = f"substituted from peer {accepted[0].candidate.peer_id[:12]} ({accepted[0].candidate.source})"
    elif any(answer.result == "rejected" for answer in answers):
        decision = "refused: no peer's copy passes this host's policy"
    elif answers:
        decision = "not found: the peers that may have it do not, or cannot be reached"
    else:
        decision = "not found: no known peer has it"
    return {"hash": hash_part, "path": path, "local": False, "peers": peers, "decision": decision}


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
            lines.append(f"  peer {peer['peer_id'][:12]} ({peer['source']}): {peer['result']}, {peer['reason']} "
                         f"[{peer['latency_ms']} ms]")
        if not why["peers"]:
            lines.append("  peers: none known to have it")
    lines.append(f"  decision: {why['decision']}")
    return "\n".join(lines)
