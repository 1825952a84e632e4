"""`peerix-tracker admin`: list, remove and purge peers, and show health, through the admin API."""

import json
import time
from pathlib import Path

import httpx

from peerix.common.secrets import SecretFileError, read_token
from peerix.common.units import ago
from peerix.net.tracker_protocol import ADMIN_PEERS_PATH


class AdminError(Exception):
    pass


class Admin:
    def __init__(self, url: str, token_file: Path | None) -> None:
        try:
            token = read_token(token_file) if token_file else ""  # read as the tracker reads its token files
        except SecretFileError as error:
            raise AdminError(f"admin token: {error}") from None
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=30,
                                 headers={"authorization": f"Bearer {token}"} if token else {})

    def call(self, method: str, path: str) -> dict:
        try:
            response = self.http.request(method, path)
        except httpx.HTTPError as error:
            raise AdminError(f"cannot reach the tracker at {self.url}: {error}") from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 400:
            message = body.get("error", {}).get("message") if isinstance(body, dict) else None
            raise AdminError(f"the tracker refused ({response.status_code}): {message or response.text[:200]}")
        return body

    def peers(self) -> list[dict]:
        return self.call("GET", ADMIN_PEERS_PATH)["peers"]

    def resolve(self, wanted: str) -> dict:
        """A peer by its id, a unique prefix of it, or its name."""
        matches = [p for p in self.peers() if p["peer_id"].startswith(wanted) or p["name"] == wanted]
        if len(matches) != 1:
            raise AdminError(f"{'no' if not matches else len(matches)} peers match {wanted!r}")
        return matches[0]


def peers_table(peers: list[dict]) -> str:
    now = time.time()
    rows = [("NAME", "PEER", "STATE", "PATHS", "LAST SEEN", "ADDRESSES")]
    rows += [(p["name"], p["peer_id"][:16], "online" if p["online"] else "offline", f"{p['paths']:,}",
              ago(p["last_seen"], now), ",".join(p["addresses"].get("direct") or []) or "-")
             for p in sorted(peers, key=lambda p: (not p["online"], p["name"]))]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def run(args) -> int:  # noqa: ANN001 - argparse.Namespace
    admin = Admin(args.url, args.token_file)
    if args.action == "peers":
        peers = admin.peers()
        print(json.dumps(peers, indent=2) if args.json else peers_table(peers))
    elif args.action == "health":
        print(json.dumps(admin.call("GET", "/health"), indent=2))
    else:
        peer = admin.resolve(args.peer)
        if args.action == "remove":
            answer = admin.call("DELETE", f"{ADMIN_PEERS_PATH}/{peer['peer_id']}")
            print(f"removed {peer['name']} ({peer['peer_id'][:16]}) and its {answer['paths']:,} paths")
        else:
            answer = admin.call("POST", f"{ADMIN_PEERS_PATH}/{peer['peer_id']}/purge")
            print(f"purged {answer['paths']:,} paths of {peer['name']} ({peer['peer_id'][:16]}); "
                  "it will announce its set afresh")
    return 0
