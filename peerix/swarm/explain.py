"""What would happen if Nix asked for a path now, and why (served at /api/v1/why/<hash>, printed by
`peerix why`). Asking changes nothing: no cache entries, no reputation.
"""

from typing import Any

from ..store.substituter import Substituter
from .policy import Policy
from .remote import RemoteStore

NOT_ASKED = ("backing-off", "banned", "not-admitted")


async def explain(substituter: Substituter, policy: Policy | None, hash_part: str) -> dict[str, Any]:
    local = await substituter.path_info(hash_part)
    if local is not None:
        sharing = await policy.may_serve(local) if policy else None
        return {
            "hash": hash_part, "path": local.store_path.full(local.store_dir), "local": True, "substitutable": True,
            "decision": "substituted from this host's store",
            "shared_with_peers": None if sharing is None else sharing.ok,
            "sharing_reason": None if sharing is None else sharing.reason,
            "peers": [],
        }
    remote = substituter.remote
    if not isinstance(remote, RemoteStore):
        return {"hash": hash_part, "path": None, "local": False, "substitutable": False, "peers": [],
                "decision": "not found: not in this host's store, and no peer network"}
    answers = await remote.explain(hash_part)
    peers = [{
        "peer_id": answer.candidate.peer_id, "source": answer.candidate.source, "result": answer.result,
        "reason": answer.detail,
        "latency_ms": None if answer.result in NOT_ASKED else round(answer.latency * 1000, 1),
    } for answer in answers]
    accepted = [answer for answer in answers if answer.result == "ok"]
    waiting = [answer for answer in answers if answer.result in NOT_ASKED]
    path = next((a.info.store_path.full(a.info.store_dir) for a in accepted if a.info), None)
    if accepted:
        decision = f"substituted from peer {accepted[0].candidate.peer_id[:12]} ({accepted[0].candidate.source})"
    elif any(answer.result == "rejected" for answer in answers):
        decision = "refused: no peer's copy passes this host's policy"
    elif waiting:
        decision = (f"not found now: {len(waiting)} peer(s) that may have it are not asked "
                    f"({', '.join(sorted({a.result for a in waiting}))})")
    elif answers:
        decision = "not found: the peers that may have it do not, or cannot be reached"
    else:
        decision = "not found: no known peer has it"
    return {"hash": hash_part, "path": path, "local": False, "substitutable": bool(accepted), "peers": peers,
            "decision": decision}
