"""Answering peers: narinfo, NAR, build log and realisation requests on the peerix ALPNs, from the
local store only.

A path outside the serving policy is answered "not-found", exactly like a path we do not have:
a stranger learns nothing about private builds. Every request and every write is bounded by a
timeout, so a peer that stops reading cannot pin a stream forever.
"""

import asyncio
import contextlib
import logging
import sqlite3
import time
from typing import Any

import iroh

from ..common.throttle import Throttle
from ..net import wire
from ..net.compression import BlockCompressor
from ..net.endpoint import StreamHandler
from ..net.fast_path import Tickets
from ..nix import nix32
from ..nix.narinfo import PathInfo
from ..nix.realisation import is_id
from ..nix.storepath import StorePath, is_hash_part
from ..store.local import MAX_LOG
from ..store.substituter import Substituter, Unavailable, narinfo_text
from ..telemetry.metrics import Metrics
from .policy import Policy
from .prefetch import held_references

log = logging.getLogger(__name__)

STOPPED_BY_RECEIVER = "Stopped(0)"  # how iroh reports the receiver's stop(0) to a writer
SLOW_UPLOAD = 64 << 20  # bytes/s: an upload capped under this compresses for receivers that accept it


class PeerService:
    def __init__(self, substituter: Substituter, policy: Policy, metrics: Metrics, timeout: float = 30.0,
                 uploads: Throttle | None = None, compression: str = "auto", all_logs: bool = False,
                 fast_path: Tickets | None = None) -> None:
        self.fast_path = fast_path  # this host's fast-path listener, if it has one
        self.compression = compression  # auto, always or never
        self.all_logs = all_logs  # every build log to any peer, not only those of derivations whose outputs we share
        self.substituter = substituter
        self.policy = policy
        self.metrics = metrics
        self.timeout = timeout  # for the request, and for each write of the answer
        self.uploads = uploads or Throttle()

    @property
    def handlers(self) -> dict[bytes, StreamHandler]:
        return {wire.NARINFO_ALPN: self.serve_narinfo, wire.NAR_ALPN: self.serve_nar,
                wire.LOG_ALPN: self.serve_log, wire.REALISATION_ALPN: self.serve_realisation}

    async def serve_narinfo(self, peer_id: str, stream: iroh.BiStream) -> None:
        request = await self._request(stream)
        info = await self._servable(peer_id, "narinfo", request.get("hash"))
        reply = {"status": "ok", "narinfo": narinfo_text(info).decode()} if info else {"status": "not-found"}
        if info and request.get("references") is True:
            reply["references"] = await held_references(self.substituter, self.policy, info)
        await self._send(stream.send(), wire.encode_frame(reply))
        await self._finish(stream.send())

    async def serve_nar(self, peer_id: str, stream: iroh.BiStream) -> None:
        started = time.monotonic()
        try:
            request = wire.NarRequest.from_message(await self._request(stream))
        except wire.WireError as error:
            return await self._refuse(stream, peer_id, "bad-request", str(error))
        info = await self._servable(peer_id, "nar", request.hash_part, growing=request.growing)
        if info is None or nix32.encode(info.nar_hash) != request.nar_hash:
            await self._send(stream.send(), wire.encode_frame({"status": "not-found"}))
            return await self._finish(stream.send())
        if request.offset > info.nar_size:
            return await self._refuse(stream, peer_id, "bad-request", "offset beyond the end of the NAR")
        end = info.nar_size if request.length is None else min(info.nar_size, request.offset + request.length)
        send = stream.send()
        blocks = BlockCompressor() if self._compress(request) else None
        header = {"status": "ok", "size": end - request.offset} | ({"encoding": wire.ZSTD_BLOCKS} if blocks else {})
        if blocks is None and await self._fast(request):
            offer = self.fast_path.offer(request.hash_part, peer_id)
            await self._send(send, wire.encode_frame(header | {"http": offer}))
            self.metrics.fast_path_offers.inc()
            log.info("offered the fast path peer=%s path=%s bytes=%d-%d", peer_id[:10], info.store_path,
                     request.offset, end - 1)
            return await self._finish(send)
        await self._send(send, wire.encode_frame(header))
        sent, outcome = 0, "failed"
        upload = self.metrics.activity.upload(peer_id, info.store_path.full(self.substituter.local.store_dir),
                                              info.nar_size, request.name)
        try:
            async with contextlib.aclosing(self.substituter.nar_chunks(info, request.offset, end)) as chunks:
                async for chunk in chunks:
                    data = b"".join(await asyncio.to_thread(blocks.blocks, chunk)) if blocks else chunk
                    await self.uploads.take(len(data))
                    await self._send(send, data)
                    sent += len(chunk)
                    upload.advance(len(chunk))
                    self.metrics.peer_sent_bytes.inc(len(chunk))
                    self.metrics.peer_wire_bytes.labels("sent").inc(len(data))
            await self._finish(send)
            outcome = "complete"
        except iroh.IrohError as error:
            if error.message() != STOPPED_BY_RECEIVER:
                raise
            outcome = "stopped"  # the receiver has what it needs from us (another peer took the rest)
        finally:
            seconds = time.monotonic() - started
            detail = f"zstd {blocks.raw_bytes / max(blocks.stored_bytes, 1):.1f}x" if blocks else ""
            self.metrics.activity.piece_done(upload, outcome, detail)
            log.info("served nar %s peer=%s path=%s bytes=%d seconds=%.3f mib_per_s=%.1f%s", outcome, peer_id[:10],
                     info.store_path, sent, seconds, sent / (1 << 20) / max(seconds, 1e-6),
                     f" {detail}" if detail else "")

    async def _fast(self, request: wire.NarRequest) -> bool:
        """Whether the bytes go over the fast path: asked for, a listener for it, and the NAR whole in the
        store (one still being pulled through grows as it is sent, which only the iroh stream follows)."""
        return (request.http and self.fast_path is not None and self.fast_path.port != 0
                and await self.substituter.path_info(request.hash_part) is not None)

    async def serve_log(self, peer_id: str, stream: iroh.BiStream) -> None:
        request = await self._request(stream)
        text = await self._shareable_log(peer_id, request.get("drv"))
        send = stream.send()
        if text is None:
            await self._send(send, wire.encode_frame({"status": "not-found"}))
        else:
            await self._send(send, wire.encode_frame({"status": "ok", "size": len(text)}))
            await self.uploads.take(len(text))
            await self._send(send, text)
        await self._finish(send)

    async def _shareable_log(self, peer_id: str, name: object) -> bytes | None:
        """The derivation's build log if this host has it and may share it (see `_log_kept`)."""
        try:
            drv = StorePath.derivation(name) if isinstance(name, str) else None
        except ValueError:
            drv = None
        if drv is None:
            self.metrics.peer_requests.labels("log", "bad-request").inc()
            return None
        if not self.all_logs and (reason := await self._log_kept(drv)):
            log.info("refused log peer=%s drv=%s reason=%s", peer_id[:10], drv, reason)
            self.metrics.peer_requests.labels("log", "refused").inc()
            return None
        text = await asyncio.to_thread(self.substituter.local.read_build_log, drv, MAX_LOG)
        self.metrics.peer_requests.labels("log", "ok" if text is not None else "not-found").inc()
        return text

    async def _log_kept(self, drv: StorePath) -> str | None:
        """Why a derivation's log stays here, or None: it is shared when this host holds one of its
        outputs and every output it holds passes the serving policy."""
        try:
            held = [info for out in await self.substituter.local.derivation_outputs(drv)
                    if (info := await self.substituter.path_info(out.hash_part))]
        except (Unavailable, sqlite3.Error) as error:
            log.error("lookup for a peer failed drv=%s error=%s", drv, error)
            return "the store cannot tell its outputs"
        if not held:
            return "none of its outputs is here"
        for info in held:
            if not (verdict := await self.policy.may_serve(info)).ok:
                return f"{info.store_path}: {verdict.reason}"
        return None

    async def serve_realisation(self, peer_id: str, stream: iroh.BiStream) -> None:
        """A realisation built here, if the serving policy shares its output."""
        request = await self._request(stream)
        id_, found = request.get("id"), None
        if isinstance(id_, str) and is_id(id_):
            try:
                found = await self.substituter.local_realisation(id_)
            except Unavailable as error:
                log.error("lookup for a peer failed id=%s error=%s", id_, error)
        if found is None:
            self.metrics.peer_requests.labels("realisation", "not-found" if is_id(str(id_)) else "bad-request").inc()
        elif await self._servable(peer_id, "realisation", found.out_path.hash_part) is None:
            found = None
        reply = {"status": "ok", "realisation": found.to_text()} if found else {"status": "not-found"}
        await self._send(stream.send(), wire.encode_frame(reply))
        await self._finish(stream.send())

    def _compress(self, request: wire.NarRequest) -> bool:
        """zstd when the receiver prefers it, or accepts it and our own upload is slow (capped under
        SLOW_UPLOAD); never with compression = never."""
        if self.compression == "never" or request.zstd is None:
            return False
        slow = 0 < self.uploads.rate < SLOW_UPLOAD
        return request.zstd == "prefer" or self.compression == "always" or slow

    async def _request(self, stream: iroh.BiStream) -> dict[str, Any]:
        async with asyncio.timeout(self.timeout):
            return await wire.read_frame(stream.recv())

    async def _servable(self, peer_id: str, kind: str, hash_part: object, growing: bool = True) -> PathInfo | None:
        """A path this host holds (or is pulling through) if the policy lets this peer have it; the
        result is counted either way."""
        if not isinstance(hash_part, str) or not is_hash_part(hash_part):
            self.metrics.peer_requests.labels(kind, "bad-request").inc()
            return None
        try:
            info = await self.substituter.path_info(hash_part)
        except Unavailable as error:
            log.error("lookup for a peer failed hash=%s error=%s", hash_part, error)
            info = None
        if info is None and growing and (in_flight := self.substituter.in_flight(hash_part)) is not None:
            info = in_flight.info  # still downloading: a peer may take what is there and follow the rest
        if info is None:
            self.metrics.peer_requests.labels(kind, "not-found").inc()
            return None
        verdict = await self.policy.may_serve(info)
        if not verdict.ok:
            log.info("refused peer=%s path=%s reason=%s", peer_id[:10], info.store_path, verdict.reason)
            self.metrics.peer_requests.labels(kind, "refused").inc()
            return None
        self.metrics.peer_requests.labels(kind, "ok").inc()
        return info

    async def _refuse(self, stream: iroh.BiStream, peer_id: str, status: str, message: str) -> None:
        log.info("bad request peer=%s status=%s message=%s", peer_id[:10], status, message)
        await self._send(stream.send(), wire.encode_frame({"status": status, "message": message}))
        await self._finish(stream.send())

    async def _send(self, send: iroh.SendStream, data: bytes) -> None:
        async with asyncio.timeout(self.timeout):
            await send.write_all(data)

    async def _finish(self, send: iroh.SendStream) -> None:
        """Finish, then wait until the peer has everything: returning early would cut it off."""
        await send.finish()
        async with asyncio.timeout(self.timeout):
            await send.stopped()

