"""An HTTP proxy in front of a real registry that injects the faults a registry will not produce
on demand: 429/503 answers, connections cut mid-body, flipped bytes.

It runs in its own thread and event loop, so the code under test (which runs its own
`asyncio.run`) talks to it like to any remote server. A `rule(request, n)` callable decides,
for the n-th request (0-based) matching nothing in particular, what to do:
    None                      forward unchanged
    ("status", code, headers) answer with that status and an error body
    ("status", code, headers, body)  the same with this JSON body
    ("cut", nbytes)           forward, but drop the connection after nbytes of body
    ("flip", offset)          forward, with the byte at `offset` of the body inverted
    ("redirect", url)         answer 307 to `url`
    ("stall", seconds)        forward the headers and a little body, then wait that long
    ("cut_request", nbytes)   read that much of the request body, then drop the connection
    ("delay", seconds)        wait that long, then forward unchanged (slow uploads and answers)
    ("flip_request", offset)  forward, with the byte at `offset` of the request body inverted
                              (no change when the body is shorter)
    ("monolithic",)           a `POST …/blobs/uploads/?digest=` with a body is done upstream as a
                              session (POST) and a PUT of that body, and the PUT's answer (201)
                              returned: a registry that takes single-request uploads
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict
    action: object = None
    t0: float = 0.0          # time.monotonic() when the request arrived
    t1: float = 0.0          # when its answer was finished (0.0 until then)


@dataclass
class FaultProxy:
    upstream: str                     # "http://127.0.0.1:PORT"
    rule: object = None               # callable(Seen, index) -> action
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    upstream_headers: dict = field(default_factory=dict)   # added to every forwarded request

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        assert ready.wait(10), "fault proxy did not start"
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def requests(self, method: str | None = None, contains: str = "") -> list[Seen]:
        return [s for s in self.seen if (not method or s.method == method) and contains in s.path]

    def _run(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._serve(ready))
        self._loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._stop = asyncio.Event()
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        ready.set()
        await self._stop.wait()
        await self._session.close()
        await runner.cleanup()

    async def _monolithic(self, request: web.Request, body: bytes) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        headers["Host"] = request.host
        async with self._session.post(f"{self.upstream}{request.path}", headers=headers,
                                      allow_redirects=False) as up:
            location = up.headers["Location"]
        location = location if "://" not in location else "/" + location.split("/", 3)[3]
        sep = "&" if "?" in location else "?"
        digest = request.query["digest"]
        async with self._session.put(f"{self.upstream}{location}{sep}digest={digest}", headers=headers,
                                     data=body, allow_redirects=False) as up:
            return web.Response(status=up.status, body=await up.read(), headers={
                k: v for k, v in up.headers.items() if k.lower() not in HOP_HEADERS})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(request.method, request.path, request.query_string, dict(request.headers), t0=time.monotonic())
        try:
            return await self._answer(request, seen)
        finally:
            seen.t1 = time.monotonic()

    async def _answer(self, request: web.Request, seen: Seen) -> web.StreamResponse:
        index = len(self.seen)
        self.seen.append(seen)
        action = self.rule(seen, index) if self.rule else None
        seen.action = action
        if action and action[0] == "status":
            code, headers = action[1], action[2]
            body = action[3] if len(action) > 3 else {
                "errors": [{"code": "INJECTED", "message": f"injected {code}"}]}
            await request.read()
            return web.json_response(body, status=code, headers=headers)
        if action and action[0] == "redirect":
            raise web.HTTPTemporaryRedirect(action[1])
        if action and action[0] == "cut_request":
            await request.content.read(action[1])
            request.transport.close()          # the client's upload dies mid-body
            return web.Response(status=500)
        body = await request.read()
        if action and action[0] == "monolithic" and request.method == "POST" and "digest" in request.query:
            return await self._monolithic(request, body)
        if action and action[0] == "delay":
            await asyncio.sleep(action[1])
        if action and action[0] == "flip_request" and 0 <= action[1] < len(body):
            i = action[1]
            body = body[:i] + bytes([body[i] ^ 0xFF]) + body[i + 1:]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        # The registry builds upload Locations from Host: keep ours, so clients come back here.
        headers["Host"] = request.host
        headers.update(self.upstream_headers)
        url = f"{self.upstream}{request.path_qs}"
        async with self._session.request(request.method, url, headers=headers, data=body or None,
                                         allow_redirects=False) as up:
            out = web.StreamResponse(status=up.status, headers={
                k: v for k, v in up.headers.items() if k.lower() not in HOP_HEADERS - {"content-length"}})
            if up.headers.get("Content-Length"):
                out.content_length = int(up.headers["Content-Length"])
            await out.prepare(request)
            if request.method == "HEAD":
                return out
            sent = 0
            async for chunk in up.content.iter_chunked(65536):
                if action and action[0] == "cut" and sent + len(chunk) >= action[1]:
                    await out.write(chunk[: action[1] - sent])
                    request.transport.close()      # the client sees a body that ends early
                    return out
                if action and action[0] == "stall" and sent > 0:
                    await asyncio.sleep(action[1])
                if action and action[0] == "flip" and sent <= action[1] < sent + len(chunk):
                    i = action[1] - sent
                    chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1:]
                await out.write(chunk)
                sent += len(chunk)
            await out.write_eof()
            return out
