#!/usr/bin/env python3
"""A pacing TCP proxy that puts a wide-area link between a client and a local registry.

    python benchmarks/wanproxy.py --upstream 127.0.0.1:5000 [--port 0] [--rtt 0.04]
        [--conn-rate 10] [--link-rate 60] [--handshake-rtts 2] [--log FILE.jsonl]

It prints ``listening on 127.0.0.1:PORT`` once it accepts connections.  bench_wan.py runs it as
a separate process; it is plain asyncio with no dependencies, so it also works on its own.

What it models (per TCP connection, for plain HTTP/1.1 on loopback):

- Distance: every byte, both ways, reaches the other side RTT/2 after it was sent (a delay
  line, not a per-request rule).  So each request/response exchange costs one RTT, whatever
  the client's keep-alive and concurrency do, without the proxy having to know where a
  response starts.
- Connection set-up: a new connection carries nothing for ``--handshake-rtts`` RTTs after the
  client connects (default 2: one for TCP's SYN/SYN-ACK, one for a TLS 1.3 handshake; the
  wire itself is plain HTTP).  Data the client sends at once waits until then.
- Bandwidth: each connection's bytes are paced to ``--conn-rate`` (a single TCP stream's
  throughput, as a long-distance path with loss gives it), and all connections together to
  ``--link-rate`` (the access link), by two virtual clocks: a piece of n bytes occupies its
  connection for n/conn_rate and the link for n/link_rate, first come first served.  Both
  directions are paced (the link is full duplex: one clock per direction).
- A failed TLS probe costs nothing: a connection whose first bytes are a TLS ClientHello is
  closed at once and counted.  skopeo with --src-tls-verify=false tries HTTPS before plain
  HTTP; against a real HTTPS registry that probe would be its connection, which is already
  charged its handshake RTTs here.

Not modelled: TCP slow start and congestion windows (a connection runs at its full rate from
its first byte), loss, jitter, DNS, server think time beyond the local registry's own.

Cost: pieces of up to 64 KiB, one timer per piece, reads of up to 256 KiB; no per-byte work.
The only parsing is of request heads (client to server), to log each request.

Log (``--log``): one JSON line per connection, written when it closes:
``{"id", "accept", "close", "tls_probe", "up", "down", "requests": [[t_sent, t_first, t_last,
method, path, status, bytes], ...]}``.  Times are time.time() seconds: ``t_sent`` when the
request's first byte reached the proxy from the client, ``t_first``/``t_last`` when the first
and last byte of its response were handed to the client (after the delay and pacing).  A
response is the bytes the server sends after the request was forwarded and before the next
one was (HTTP/1.1 clients do not pipeline).  A line ``{"open": id, "accept": t}`` is written
when a connection is accepted, so a reader can wait for every connection to be closed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

PIECE = 64 * 1024          # pacing granularity
READ = 256 * 1024          # largest read from either side
QUEUE_LIMIT = 4 << 20      # bytes buffered per direction before the proxy stops reading


class Clock:
    """A virtual clock: the time at which a resource (a connection, the link) is next free."""

    __slots__ = ("free",)

    def __init__(self) -> None:
        self.free = 0.0


class Request:
    __slots__ = ("t_sent", "t_first", "t_last", "method", "path", "status", "nbytes")

    def __init__(self, t_sent: float, method: str, path: str) -> None:
        self.t_sent, self.method, self.path = t_sent, method, path
        self.t_first = self.t_last = None
        self.status = None
        self.nbytes = 0

    def row(self) -> list:
        return [round(self.t_sent, 6), self.t_first and round(self.t_first, 6),
                self.t_last and round(self.t_last, 6), self.method, self.path, self.status, self.nbytes]


class RequestParser:
    """Finds request heads in the client's byte stream (bodies skipped by Content-Length)."""

    def __init__(self) -> None:
        self.buf = b""
        self.body_left = 0
        self.lost = False   # a chunked request body: stop parsing this connection

    def feed(self, data: bytes, t: float) -> list[Request]:
        if self.lost:
            return []
        out = []
        view = memoryview(data)
        while view:
            if self.body_left:
                n = min(self.body_left, len(view))
                self.body_left -= n
                view = view[n:]
                continue
            self.buf += bytes(view)
            view = memoryview(b"")
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 1 << 16:
                    self.lost = True
                return out
            head, rest = self.buf[:end].decode("latin-1"), self.buf[end + 4:]
            self.buf = b""
            lines = head.split("\r\n")
            parts = lines[0].split(" ")
            out.append(Request(t, parts[0], parts[1] if len(parts) > 1 else ""))
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    self.body_left = int(value.strip() or 0)
                elif name == "transfer-encoding" and "chunked" in value.lower():
                    self.lost = True
                    return out
            view = memoryview(rest)
        return out


class Proxy:
    def __init__(self, upstream: tuple[str, int], rtt: float, conn_rate: float, link_rate: float,
                 handshake_rtts: float, log_path: str | None) -> None:
        self.upstream = upstream
        self.rtt, self.conn_rate, self.link_rate = rtt, conn_rate, link_rate
        self.handshake = handshake_rtts * rtt
        self.link_down, self.link_up = Clock(), Clock()
        self.log = open(log_path, "a", buffering=1) if log_path else None
        self.next_id = 0
        # Loop time and wall time differ by a constant: log wall time, schedule in loop time.
        self.loop = asyncio.get_running_loop()
        self.offset = time.time() - self.loop.time()

    def wall(self, t: float) -> float:
        return t + self.offset

    def write_log(self, doc: dict) -> None:
        if self.log:
            self.log.write(json.dumps(doc, separators=(",", ":")) + "\n")

    async def pace(self, conn_clock: Clock, link: Clock, ready: float, n: int) -> None:
        """Wait until n bytes that became available at `ready` have crossed the link.

        Virtual clocks, not `now`: a busy connection's next piece starts when its previous
        one ended, so a late wake-up does not slow the stream down."""
        start = max(ready, conn_clock.free)
        link_start = max(start, link.free)
        link.free = link_start + n / self.link_rate
        conn_clock.free = max(start + n / self.conn_rate, link.free)
        delay = conn_clock.free - self.loop.time()
        if delay > 0.0005:
            await asyncio.sleep(delay)

    async def handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        loop = self.loop
        accepted = loop.time()
        cid = self.next_id = self.next_id + 1
        rec = {"id": cid, "accept": round(self.wall(accepted), 6), "tls_probe": False, "up": 0, "down": 0}
        self.write_log({"open": cid, "accept": rec["accept"]})
        requests: list[Request] = []
        s_writer = None
        try:
            first = await c_reader.read(READ)
            if first[:1] == b"\x16":        # TLS ClientHello on a plain-HTTP port
                rec["tls_probe"] = True
                return
            if not first:
                return
            s_reader, s_writer = await asyncio.open_connection(*self.upstream, limit=READ)
            for w in (c_writer, s_writer):
                w.transport.set_write_buffer_limits(high=1 << 20)
            opened = accepted + self.handshake
            state = {"current": None}
            parser = RequestParser()
            up_q: asyncio.Queue = asyncio.Queue()
            down_q: asyncio.Queue = asyncio.Queue()
            room = {"up": asyncio.Event(), "down": asyncio.Event()}
            queued = {"up": 0, "down": 0}
            conn_up, conn_down = Clock(), Clock()

            async def read_client() -> None:
                data = first
                while data:
                    t = loop.time()
                    reqs = parser.feed(data, self.wall(t))
                    requests.extend(reqs)
                    queued["up"] += len(data)
                    up_q.put_nowait((max(t, opened) + self.rtt / 2, data, reqs))
                    while queued["up"] > QUEUE_LIMIT:
                        room["up"].clear()
                        await room["up"].wait()
                    data = await c_reader.read(READ)
                up_q.put_nowait(None)

            async def write_server() -> None:
                while (item := await up_q.get()) is not None:
                    ready, data, reqs = item
                    for i in range(0, len(data), PIECE):
                        piece = data[i:i + PIECE]
                        await self.pace(conn_up, self.link_up, ready, len(piece))
                        if i == 0 and reqs:
                            state["current"] = reqs[-1]   # what the server sends next answers it
                        s_writer.write(piece)
                        rec["up"] += len(piece)
                    queued["up"] -= len(data)
                    room["up"].set()
                    await s_writer.drain()
                if s_writer.can_write_eof():
                    s_writer.write_eof()

            async def read_server() -> None:
                while data := await s_reader.read(READ):
                    queued["down"] += len(data)
                    down_q.put_nowait((loop.time() + self.rtt / 2, data, state["current"]))
                    while queued["down"] > QUEUE_LIMIT:
                        room["down"].clear()
                        await room["down"].wait()
                down_q.put_nowait(None)

            async def write_client() -> None:
                while (item := await down_q.get()) is not None:
                    ready, data, req = item
                    view = memoryview(data)
                    for i in range(0, len(data), PIECE):
                        piece = view[i:i + PIECE]
                        await self.pace(conn_down, self.link_down, ready, len(piece))
                        c_writer.write(piece)
                        rec["down"] += len(piece)
                        if req is not None:
                            now = self.wall(loop.time())
                            if req.t_first is None:
                                req.t_first = now
                                if data[:7] == b"HTTP/1." and len(data) >= 12:
                                    req.status = int(data[9:12]) if data[9:12].isdigit() else None
                            req.t_last = now
                            req.nbytes += len(piece)
                    queued["down"] -= len(data)
                    room["down"].set()
                    await c_writer.drain()

            tasks = [asyncio.ensure_future(f()) for f in (read_client, write_server, read_server, write_client)]
            # Done when the server's side has been delivered (the server closed, or the client
            # closed and the server followed), or when anything fails (a reset).
            pending = set(tasks)
            try:
                while tasks[3] in pending:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    if any(not t.cancelled() and t.exception() is not None for t in done):
                        break
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        except (ConnectionError, OSError):
            pass
        finally:
            for w in (s_writer, c_writer):
                if w is not None:
                    w.close()
            rec["close"] = round(time.time(), 6)
            rec["requests"] = [r.row() for r in requests]
            self.write_log(rec)


async def serve(args) -> None:
    host, _, port = args.upstream.rpartition(":")
    proxy = Proxy((host or "127.0.0.1", int(port)), args.rtt, args.conn_rate * 1e6, args.link_rate * 1e6,
                  args.handshake_rtts, args.log)
    server = await asyncio.start_server(proxy.handle, args.listen, args.port, limit=READ, backlog=512)
    sock = server.sockets[0].getsockname()
    print(f"listening on {sock[0]}:{sock[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", required=True, help="HOST:PORT of the server (the registry)")
    ap.add_argument("--listen", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    ap.add_argument("--rtt", type=float, default=0.040, help="round-trip time, seconds (0.040)")
    ap.add_argument("--conn-rate", type=float, default=10.0, help="MB/s (10^6 bytes) per connection (10)")
    ap.add_argument("--link-rate", type=float, default=60.0, help="MB/s (10^6 bytes) of all connections (60)")
    ap.add_argument("--handshake-rtts", type=float, default=2.0,
                    help="RTTs before a new connection carries data: 1 TCP + 1 TLS (2)")
    ap.add_argument("--log", help="append one JSON line per connection to this file")
    args = ap.parse_args(argv)
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
