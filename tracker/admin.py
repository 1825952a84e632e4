"""`peerix-tracker admin`: list, remove and purge peers, show health and the audit trail, through the admin API."""

import datetime
import json
import re
import time
from pathlib import Path

import httpx

from peerix.common.secrets import SecretFileError, read_token
from peerix.common.units import ago
from peerix.net.tracker_client import TrackerError, tls_context
from peerix.net.tracker_protocol import ADMIN_AUDIT_PATH, ADMIN_PEERS_PATH


class AdminError(Exception):
    pass


class Admin:
    def __init__(self, url: str, token_file: Path | None, ca_file: Path | None = None) -> None:
        try:
            token = read_token(token_file) if token_file else ""  # read as the tracker reads its token files
        except SecretFileError as error:
            raise AdminError(f"admin token: {error}") from None
        try:
            verify = tls_context(ca_file)
        except TrackerError as error:
            raise AdminError(str(error)) from None
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=30, verify=verify,
                                 headers={"authorization": f"Bearer {token}"} if token else {})

    def call(self, method: str, path: str, params: dict | None = None) -> dict:
        try:
            response = self.http.request(method, path, params=params)
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


def parse_since(text: str, now: float) -> float:
    """A duration ago (90s, 3m, 12h, 7d), an ISO 8601 date or time (UTC unless it says), or Unix seconds."""
    if match := re.fullmatch(r"(\d+(?:\.\d+)?)(s|m|h|d)", text.strip()):
        return now - float(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise AdminError(f"--since: expected a duration (3m, 12h, 7d), an ISO 8601 time or Unix seconds, "
                         f"got {text!r}") from None
    return (when if when.tzinfo else when.replace(tzinfo=datetime.UTC)).timestamp()


def audit_lines(events: list[dict]) -> str:
    """One line an event: time, actor, event, then what happened as key=value."""
    lines = []
    for event in events:
        details = " ".join(f"{key}={json.dumps(value) if not isinstance(value, str) else value}"
                           for key, value in event.items() if key not in ("time", "actor", "event"))
        lines.append(f"{event.get('time')}  {event.get('actor')}  {event.get('event')}  {details}".rstrip())
    return "\n".join(lines) or "no audit events"


def peers_table(peers: list[dict]) -> str:
    now = time.time()
    rows = [("NAME", "PEER", "STATE", "PATHS", "LAST SEEN", "ADDRESSES")]
    rows += [(p["name"], p["peer_id"][:16], "online" if p["online"] else "offline", f"{p['paths']:,}",
              ago(p["last_seen"], now), ",".join(p["addresses"].get("direct") or []) or "-")
             for p in sorted(peers, key=lambda p: (not p["online"], p["name"]))]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def run(args) -> int:  # noqa: ANN001 - argparse.Namespace
    admin = Admin(args.url, args.token_file, args.ca_file)
    if args.action == "audit":
        params = {} if args.since is None else {"since": parse_since(args.since, time.time())}
        events = admin.call("GET", ADMIN_AUDIT_PATH, params)["events"]
        print("\n".join(json.dumps(event) for event in events) if args.json else audit_lines(events))
    elif args.action == "peers":
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
