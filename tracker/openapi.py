"""The tracker's API as an OpenAPI 3.1 document, served at /openapi.json.

It describes every route with its bodies and every error it can answer, so a standard client (or a
conformance tester such as schemathesis, which the suite runs against a live tracker) can hold the
tracker to it. Signed writes carry four headers whose signature covers the body (README: "Membership
and request signatures"); OpenAPI cannot express that scheme, so they appear as plain headers.
"""

from typing import Any

from peerix import __version__
from peerix.net.tracker_protocol import (
    ADMIN_AUDIT_PATH,
    ADMIN_PEERS_PATH,
    ANNOUNCE_PATH,
    LEASES_PATH,
    LOOKUP_PATH,
    MEMBERS_PATH,
    NONCE_HEADER,
    PEER_HEADER,
    PEERS_PATH,
    SIGNATURE_HEADER,
    STATS_PATH,
    TIMESTAMP_HEADER,
)

from .model import MAX_DIRECT_ADDRESSES, MAX_NAME_LENGTH, MAX_URL_LENGTH

HASH = {"type": "string", "pattern": "^[0-9a-df-np-sv-z]{32}$", "description": "a store path hash part (nix32)"}
PEER_ID = {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "an ed25519 public key in hex"}
_JSON = "application/json"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict:
    return {"description": description, "content": {_JSON: {"schema": _ref("Error")}}}


def _ok(schema: dict, description: str = "done") -> dict:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


_COMMON_ERRORS = {
    "429": {**_error("rate_limited: too many requests from this address or peer"),
            "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "whole seconds"}}},
    "503": _error("unavailable: the tracker's database failed; retry later"),
}
_READ_ERRORS = {
    "401": _error("unauthenticated, stale_timestamp or bad_signature (reads are signed under allowlist "
                  "membership; a token is needed under token membership)"),
    "403": _error("not_member"),
    **_COMMON_ERRORS,
}
_WRITE_ERRORS = {
    "400": _error("invalid_request, malformed_json, invalid_hash or invalid_peer_id"),
    "401": _error("unauthenticated, stale_timestamp, bad_signature or replayed"),
    "403": _error("not_member or forbidden"),
    "408": _error("request_timeout: the body did not arrive in time"),
    "413": _error("body_too_large or too_many_hashes"),
    **_COMMON_ERRORS,
}
_ADMIN_ERRORS = {
    "400": _error("invalid_peer_id"),
    "401": _error("unauthorized: no valid admin token"),
    "403": _error("admin_disabled: the tracker has no admin_token_file"),
    **_COMMON_ERRORS,
}


_PAGE = {"200": {"description": "the page", "content": {"text/html": {"schema": {"type": "string"}}}},
         "403": _error("dashboard_private: shown only on the tracker's own host under closed membership"),
         "404": _error("not_found: the dashboard is off")}


def _signed(operation: dict) -> dict:
    headers = [{"name": name, "in": "header", "required": False, "schema": {"type": "string"}}
               for name in (PEER_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER)]
    return {**operation, "parameters": operation.get("parameters", []) + headers}


def _admin(operation: dict) -> dict:
    return {**operation, "security": [{"adminToken": []}]}


def _peer_path(description: str) -> dict:
    return {"name": "peer_id", "in": "path", "required": True, "schema": PEER_ID, "description": description}


SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
    "Addresses": {"type": "object", "properties": {
        "endpoint_id": PEER_ID,
        "direct": {"type": "array", "maxItems": MAX_DIRECT_ADDRESSES, "items": {
            "type": "string", "description": "IP:PORT, [IPv6]:PORT"}},
        "relay_url": {"type": ["string", "null"], "maxLength": MAX_URL_LENGTH, "format": "uri"},
        "http_url": {"type": ["string", "null"], "maxLength": MAX_URL_LENGTH, "format": "uri"}}},
    "PeerRecord": {"type": "object", "required": ["peer_id", "name", "addresses", "last_seen", "paths"],
                   "properties": {"peer_id": PEER_ID, "name": {"type": "string"},
                                  "addresses": {"allOf": [_ref("Addresses")], "required": ["endpoint_id", "direct"]},
                                  "last_seen": {"type": "number"}, "paths": {"type": "integer", "minimum": 0}}},
    "PeerListing": {"allOf": [_ref("PeerRecord"), {
        "type": "object", "required": ["online", "first_seen"],
        "properties": {"online": {"type": "boolean"}, "first_seen": {"type": "number"}}}]},
    "Peers": {"type": "object", "required": ["peers"],
              "properties": {"peers": {"type": "array", "items": _ref("PeerListing")}}},
    "Announce": {"type": "object", "required": ["name", "addresses"], "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH,
                 "description": "printable, not only spaces"},
        "addresses": _ref("Addresses"),
        "hashes": {"type": "array", "items": HASH, "description": "the full set"},
        "since": {"type": "integer", "minimum": 0, "description": "a delta against this sequence number"},
        "added": {"type": "array", "items": HASH}, "removed": {"type": "array", "items": HASH, "description":
                                                              "none of them in added"}},
        "oneOf": [{"required": ["hashes"], "not": {"anyOf": [{"required": ["added"]}, {"required": ["removed"]}]},
                   "description": "a full announce"},
                  {"required": ["since"], "description": "a delta; without added and removed, a heartbeat"}]},
    "Lease": {"type": "object", "required": ["hash", "granted", "until", "ttl", "holder"], "properties": {
        "hash": HASH, "granted": {"type": "boolean", "description": "the asker holds it (taken or renewed)"},
        "until": {"type": "number", "description": "when it runs out without a renewal (Unix time)"},
        "ttl": {"type": "number", "description": "seconds a lease lasts"},
        "holder": {"oneOf": [{"type": "null"}, _ref("PeerRecord")],
                   "description": "who holds it, when not the asker"}}},
    "Series": {"type": "object", "required": ["step", "end", "values"], "properties": {
        "step": {"type": "integer", "description": "seconds per value"},
        "end": {"type": "number", "description": "when the last value's slot ends (Unix time)"},
        "values": {"type": "array", "items": {"type": ["number", "null"]},
                   "description": "oldest first; null: no data (before this replica started)"}}},
    "Stats": {"type": "object", "required": ["now", "counts", "per_minute", "history"], "properties": {
        "now": {"type": "number"},
        "counts": {"type": "object", "required": ["peers_online", "peers_offline", "paths", "holdings"],
                   "additionalProperties": {"type": "integer", "minimum": 0}},
        "per_minute": {"type": "object", "required": ["announces", "lookups"],
                       "additionalProperties": {"type": "number", "minimum": 0},
                       "description": "this replica's, over the last 5 minutes"},
        "history": {"type": "object", "required": ["peers_online", "announces", "lookups"],
                    "additionalProperties": _ref("Series"),
                    "description": "the last hour per minute: peers online, and this replica's announces and "
                                   "lookups"}}},
    "Announced": {"type": "object", "required": ["seq", "paths"], "properties": {
        "seq": {"type": "integer"}, "paths": {"type": "integer"},
        "advice": {"type": "object", "additionalProperties": {"type": "integer"}}}},
}


def document() -> dict[str, Any]:
    lookup_limit = {"name": "limit", "in": "query", "required": False,
                    "schema": {"type": "integer", "minimum": 1}, "description": "most peers per hash"}
    paths = {
        ANNOUNCE_PATH: {"post": _signed({
            "summary": "Announce this peer's set: the full set, a delta, or an empty delta (a heartbeat)",
            "requestBody": {"required": True, "content": {_JSON: {"schema": _ref("Announce")}}},
            "responses": {"200": _ok(_ref("Announced")),
                          "409": _error("sequence_mismatch: send the full set"), **_WRITE_ERRORS}})},
        LOOKUP_PATH + "/{hash}": {"get": _signed({
            "summary": "Online peers holding a path, most recently seen first",
            "parameters": [{"name": "hash", "in": "path", "required": True, "schema": HASH}, lookup_limit],
            "responses": {"200": _ok({"type": "object", "required": ["hash", "peers"], "properties": {
                "hash": HASH, "peers": {"type": "array", "items": _ref("PeerRecord")}}}),
                "400": _error("invalid_hash or invalid_request"), **_READ_ERRORS}})},
        LOOKUP_PATH: {"post": _signed({
            "summary": "Holders of many paths at once; each peer listed once",
            "requestBody": {"required": True, "content": {_JSON: {"schema": {
                "type": "object", "required": ["hashes"], "properties": {
                    "hashes": {"type": "array", "items": HASH},
                    "limit": {"type": ["integer", "null"], "minimum": 1, "description": "null: the tracker's"}}}}}},
            "responses": {"200": _ok({"type": "object", "required": ["peers", "results"], "properties": {
                "peers": {"type": "array", "items": _ref("PeerRecord")},
                "results": {"type": "object", "additionalProperties": {"type": "array", "items": {
                    "type": "integer", "minimum": 0}}}}}),
                "400": _error("invalid_request, malformed_json or invalid_hash"),
                "408": _error("request_timeout"), "413": _error("body_too_large or too_many_hashes"),
                **_READ_ERRORS}})},
        PEERS_PATH: {"get": _signed({"summary": "Every peer, online or not",
                                     "responses": {"200": _ok(_ref("Peers")), **_READ_ERRORS}})},
        STATS_PATH: {"get": {"summary": "The fleet's counts and this replica's last hour (open, like /health)",
                             "responses": {"200": _ok(_ref("Stats")), **_COMMON_ERRORS}}},
        PEERS_PATH + "/{peer_id}": {"get": _signed({
            "summary": "One peer, online or not", "parameters": [_peer_path("the peer")],
            "responses": {"200": _ok(_ref("PeerListing")), "400": _error("invalid_peer_id"),
                          "404": _error("not_found: the tracker holds nothing for the peer"), **_READ_ERRORS}}),
                                    "delete": _signed({
            "summary": "Leave (keeping the set for a delta on return), or with forget the set dropped too",
            "parameters": [_peer_path("the signer itself")],
            "requestBody": {"required": False, "content": {_JSON: {"schema": {
                "type": "object", "properties": {"forget": {"type": "boolean"}}}}}},
            "responses": {"200": _ok({"type": "object", "required": ["paths"], "properties": {
                "departed": PEER_ID, "removed": PEER_ID, "paths": {"type": "integer"}}}),
                "404": _error("not_found: the tracker holds nothing for the peer"), **_WRITE_ERRORS}})},
        LEASES_PATH + "/{hash}": {
            "post": _signed({
                "summary": "Take or renew the lease on a path (who fetches it from the upstream for the fleet), "
                           "or learn who holds it",
                "parameters": [{"name": "hash", "in": "path", "required": True, "schema": HASH},
                               {"name": "done", "in": "query", "required": False,
                                "description": "1: the holder's copy is whole; keep naming it for 3 TTLs",
                                "schema": {"type": "string", "enum": ["1"]}}],
                "responses": {"200": _ok(_ref("Lease")),
                              "409": _error("not_announced: only a peer that announced may hold a lease"),
                              **_WRITE_ERRORS}}),
            "delete": _signed({
                "summary": "Give up a lease this peer holds",
                "parameters": [{"name": "hash", "in": "path", "required": True, "schema": HASH}],
                "responses": {"200": _ok({"type": "object", "required": ["hash", "released"], "properties": {
                    "hash": HASH, "released": {"type": "boolean"}}}), **_WRITE_ERRORS}}),
        },
        MEMBERS_PATH: {"get": _signed({
            "summary": "The members daemons answer under closed membership: the peers held that are still admitted",
            "parameters": [{"name": "since", "in": "query", "required": False, "schema": {"type": "string"},
                            "description": "the version last fetched: members are left out when it is current"}],
            "responses": {"200": _ok({"type": "object", "required": ["membership", "version"], "properties": {
                "membership": {"enum": ["open", "allowlist", "token"]}, "version": {"type": "string"},
                "members": {"type": "array", "items": PEER_ID,
                            "description": "absent when unchanged since `since`; empty under open membership"}}}),
                **_READ_ERRORS}})},
        ADMIN_AUDIT_PATH: {"get": _admin({
            "summary": "The audit trail's events, oldest first (admin)",
            "parameters": [
                {"name": "since", "in": "query", "required": False, "schema": {"type": "number"},
                 "description": "Unix time: only events at or after it"},
                {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1},
                 "description": "the most recent events, at most this many (and at most 10000)"}],
            "responses": {"200": _ok({"type": "object", "required": ["events"], "properties": {"events": {
                "type": "array", "items": {"type": "object", "required": ["time", "actor", "event"], "properties": {
                    "time": {"type": "string"}, "actor": {"type": "string"}, "event": {"type": "string"}}}}}}),
                **_ADMIN_ERRORS, "400": _error("invalid_request: since or limit is not a number")}})},
        ADMIN_PEERS_PATH: {"get": _admin({"summary": "Every peer (admin)",
                                          "responses": {"200": _ok(_ref("Peers")), **_ADMIN_ERRORS}})},
        ADMIN_PEERS_PATH + "/{peer_id}": {"delete": _admin({
            "summary": "Remove a peer and its set (admin)", "parameters": [_peer_path("the peer to remove")],
            "responses": {"200": _ok({"type": "object", "required": ["removed", "paths"], "properties": {
                "removed": PEER_ID, "paths": {"type": "integer"}}}),
                "404": _error("not_found"), **_ADMIN_ERRORS}})},
        ADMIN_PEERS_PATH + "/{peer_id}/purge": {"post": _admin({
            "summary": "Drop a peer's set, keep the peer: its next delta meets a 409 (admin)",
            "parameters": [_peer_path("the peer to purge")],
            "responses": {"200": _ok({"type": "object", "required": ["purged", "paths"], "properties": {
                "purged": PEER_ID, "paths": {"type": "integer"}}}),
                "404": _error("not_found"), **_ADMIN_ERRORS}})},
        "/health": {"get": {"summary": "Health: database, sweep, counts",
                            "responses": {"200": _ok({"type": "object", "required": ["status"], "properties": {
                                "status": {"enum": ["ok", "degraded"]}}}),
                                "503": _ok({"type": "object", "required": ["status"], "properties": {
                                    "status": {"const": "error"}}}, "the database does not answer")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
            "description": "text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/": {"get": {"summary": "The dashboard (HTML)", "parameters": [
            {"name": "page", "in": "query", "required": False, "schema": {"type": "string"},
             "description": "which page of peers (from 1)"}], "responses": _PAGE}},
        "/search": {"get": {"summary": "The dashboard's answer to who holds a path (HTML)", "parameters": [
            {"name": "q", "in": "query", "required": False, "schema": {"type": "string"},
             "description": "a store path, its base name or its hash"}], "responses": _PAGE}},
        "/peers/{peer_id}": {"get": {"summary": "The dashboard's page of one peer (HTML)",
                                     "parameters": [_peer_path("the peer")], "responses": {
                                         **_PAGE, "400": _error("invalid_peer_id"),
                                         "404": _error("not_found: no such peer, or the dashboard is off")}}},
        "/static/{name}": {"get": {"summary": "The dashboard's stylesheet and script", "parameters": [
            {"name": "name", "in": "path", "required": True, "schema": {"enum": ["dashboard.css", "dashboard.js"]}}],
            "responses": {"200": {"description": "the file", "content": {
                "text/css": {"schema": {"type": "string"}}, "text/javascript": {"schema": {"type": "string"}}}},
                "404": _error("not_found: no such file, or the dashboard is off")}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _ok({"type": "object"})}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "peerix tracker", "version": __version__,
                 "description": "Which online peers hold which Nix store path hashes. Every refusal is "
                                "{\"error\": {\"code\", \"message\"}}; unknown fields are ignored."},
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "adminToken": {"type": "http", "scheme": "bearer", "description": "a token of admin_token_file"},
            "networkToken": {"type": "http", "scheme": "bearer", "description": "token membership's token"}}},
    }
