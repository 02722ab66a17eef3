"""HTTP that no client can wedge, tried with raw sockets as a hostile client would.

In-process tests run the real listener (``exporter.serve.guard.start_server``) with small limits so that
timeouts pass in a second or two (the keep-alive test uses the defaults); the end-to-end tests run
the CLI with its defaults.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time

import aiohttp
import pytest
from aiohttp import web
from conftest import wait_until_async
from e2e import AgentProcess, value

from exporter.serve.guard import Guard, HttpLimits, start_server
from exporter.config.webconfig import WebConfig

LIMITS = HttpLimits(max_connections=8, idle_timeout=3.0, read_timeout=1.0, write_timeout=1.0,
                    tls_handshake_timeout=1.0)
SCRAPE = b"GET /metrics HTTP/1.1\r\nHost: node\r\nAccept: */*\r\n\r\n"
BIG = b"x" * (32 << 20)  # larger than any socket buffer: a client that does not read blocks the write


class Served:
    """The guarded listener with /metrics, /slow (waits for ``release``) and /big."""

    def __init__(self, limits: HttpLimits = LIMITS) -> None:
        self.limits = limits
        self.release = asyncio.Event()

    async def __aenter__(self) -> "Served":
        async def metrics(request: web.Request) -> web.Response:
            self.answered_on.append(request.protocol)
            return web.Response(text="up 1\n")

        async def slow(request: web.Request) -> web.Response:
            await self.release.wait()
            return web.Response(text="done\n")

        async def big(request: web.Request) -> web.Response:
            return web.Response(body=BIG)

        self.guard = Guard(WebConfig(), self.limits)
        self.answered_on: list[object] = []  # the connection (server side) each /metrics was answered on
        app = web.Application(middlewares=[self.guard.middleware])
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/slow", slow)
        app.router.add_get("/big", big)
        self.runner, self.site = await start_server(app, "127.0.0.1", 0, guard=self.guard)
        return self

    async def __aexit__(self, *exc) -> None:
        self.release.set()
        await self.runner.cleanup()

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.site.port)

    async def request(self, raw: bytes) -> bytes:
        """Send ``raw`` on a fresh connection and read the whole answer (the guard closes after rejects)."""
        reader, writer = await self.connect()
        writer.write(raw)
        try:
            return await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()

    async def scrape(self) -> bytes:
        reader, writer = await self.connect()
        writer.write(SCRAPE)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.close()
        return head


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the server closes the connection within ``seconds`` (data read meanwhile is dropped)."""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            chunk = await asyncio.wait_for(reader.read(65536), max(0.01, deadline - time.monotonic()))
            if not chunk:
                return True
    except (asyncio.TimeoutError, TimeoutError):
        return False
    except ConnectionError:
        return True
    return False


async def scrape_on(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """One scrape on an open connection: the response's head (its body is read too)."""
    writer.write(SCRAPE)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    await asyncio.wait_for(reader.readexactly(length), 10)
    return head


@pytest.mark.integration
async def test_a_keep_alive_connection_waits_the_idle_timeout_for_its_next_request():
    async with Served() as served:
        reader, writer = await served.connect()
        assert (await scrape_on(reader, writer)).startswith(b"HTTP/1.1 200")
        # Idle for longer than a request may take to arrive: still open, and it serves the next one.
        assert not await closed_within(reader, LIMITS.read_timeout + 0.5)
        assert (await scrape_on(reader, writer)).startswith(b"HTTP/1.1 200")
        assert served.answered_on[0] is served.answered_on[1]
        assert await closed_within(reader, LIMITS.idle_timeout + 2)  # then closed, idle too long


#: A long idle timeout: a connection closed within a few seconds was closed by the read deadline.
PATIENT = dataclasses.replace(LIMITS, idle_timeout=60.0)


@pytest.mark.integration
async def test_a_connection_that_sends_nothing_is_closed_after_the_read_timeout():
    async with Served(PATIENT) as served:
        silent, _ = await served.connect()
        assert await closed_within(silent, PATIENT.read_timeout + 3)


@pytest.mark.integration
async def test_scrapes_15_s_apart_on_one_client_session_use_one_connection():
    """The defaults: Prometheus' next scrape, an interval later, finds its connection open."""
    async with Served(HttpLimits()) as served:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(keepalive_timeout=300)) as session:
            for i in range(2):
                if i:
                    await asyncio.sleep(15)
                async with session.get(f"http://127.0.0.1:{served.site.port}/metrics") as response:
                    assert response.status == 200 and await response.text() == "up 1\n"
        assert served.site.connections_opened == 1
        assert len(served.answered_on) == 2 and served.answered_on[0] is served.answered_on[1]


@pytest.mark.integration
async def test_a_request_sent_a_byte_at_a_time_is_dropped():
    async with Served(PATIENT) as served:
        for keep_alive_first in (False, True):  # on a new connection, and after a first response
            reader, writer = await served.connect()
            if keep_alive_first:
                assert (await scrape_on(reader, writer)).startswith(b"HTTP/1.1 200")
                await asyncio.sleep(PATIENT.read_timeout + 0.2)  # idle: its deadline starts at the next byte
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: node\r\n")

            async def dropped() -> bool:
                try:
                    writer.write(b"X")  # a header that never ends
                    await writer.drain()
                except ConnectionError:
                    return True
                return await closed_within(reader, 0.2)

            await wait_until_async(dropped, timeout=PATIENT.read_timeout + 3, interval=0,
                                   message="the slowloris connection to be dropped")
        assert (await served.scrape()).startswith(b"HTTP/1.1 200")


async def test_at_the_cap_the_oldest_idle_connection_makes_room_for_a_scrape():
    async with Served() as served:
        idle = [await served.connect() for _ in range(LIMITS.max_connections)]
        assert (await served.scrape()).startswith(b"HTTP/1.1 200")
        assert await closed_within(idle[0][0], 2)  # the oldest idle one went
        assert not await closed_within(idle[-1][0], 0.1)  # the newest stays


async def test_at_the_cap_the_connection_idle_the_longest_goes_not_the_scrapers():
    async with Served() as served:
        scraper = await served.connect()  # the oldest connection, but it scrapes
        idle = [await served.connect() for _ in range(LIMITS.max_connections - 1)]
        assert (await scrape_on(*scraper)).startswith(b"HTTP/1.1 200")
        newcomer = await served.connect()
        assert await closed_within(idle[0][0], 2)  # idle since it opened: it made room
        assert (await scrape_on(*scraper)).startswith(b"HTTP/1.1 200")  # the scraper's connection stays
        assert len(set(map(id, served.answered_on))) == 1
        newcomer[1].close()


async def test_when_every_connection_is_busy_a_new_one_is_refused_then_served_after():
    async with Served() as served:
        busy = []
        for _ in range(LIMITS.max_connections):
            reader, writer = await served.connect()
            writer.write(b"GET /slow HTTP/1.1\r\nHost: node\r\n\r\n")
            busy.append((reader, writer))
        await wait_until_async(lambda: len(served.guard.busy) == LIMITS.max_connections, message="every connection busy")
        extra, _ = await served.connect()
        assert await closed_within(extra, 2)
        assert served.guard.rejected["connection_limit"] >= 1
        served.release.set()
        for reader, _ in busy:
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
        assert (await served.scrape()).startswith(b"HTTP/1.1 200")


@pytest.mark.integration
async def test_a_client_that_does_not_read_is_cut_off_after_the_write_timeout():
    async with Served() as served:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", served.site.port))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"GET /big HTTP/1.1\r\nHost: node\r\n\r\n")
        await wait_until_async(lambda: served.guard.rejected["write_timeout"] == 1, message="the write deadline")
        received = 0
        try:
            while chunk := await asyncio.wait_for(reader.read(1 << 20), 5):
                received += len(chunk)
        except ConnectionError:
            pass
        assert received < len(BIG)
        assert not served.guard.busy
        assert (await served.scrape()).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("raw, status", [
    (b"POST /metrics HTTP/1.1\r\nHost: n\r\nContent-Length: 0\r\n\r\n", b"405"),
    (b"DELETE /metrics HTTP/1.1\r\nHost: n\r\n\r\n", b"405"),
    (b"OPTIONS * HTTP/1.1\r\nHost: n\r\n\r\n", b"405"),
    (b"TRACE /metrics HTTP/1.1\r\nHost: n\r\n\r\n", b"405"),
    (b"GET /etc/passwd HTTP/1.1\r\nHost: n\r\n\r\n", b"404"),
    (b"GET /metrics/../metrics HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n", b"404"),
    (b"GET /metrics HTTP/1.1\r\nHost: n\r\nContent-Length: 5\r\n\r\nhello", b"400"),
    (b"GET /metrics HTTP/1.1\r\nHost: n\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", b"400"),
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: n\r\n\r\n", b"4"),
    (b"GET /metrics HTTP/1.1\r\nHost: n\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(100)) + b"\r\n", b"4"),
    (b"GET /metrics HTTP/1.1\r\nHost: n\r\nX-Big: " + b"a" * 10000 + b"\r\n\r\n", b"4"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(200)) + b"\r\n\r\n", b"400"),
    (b"GET /metrics HTTP/9.9\r\n\r\n", b"4"),
    (b"GET /metrics HTTP/1.1\r\nHost: n\r\nBad Header\r\n\r\n", b"400"),
])
async def test_client_mistakes_get_a_short_answer_and_no_stack_trace(raw, status, caplog):
    caplog.set_level(logging.DEBUG)
    async with Served() as served:
        answer = await served.request(raw)
        assert answer.split(b" ")[1].startswith(status), answer[:200]
        assert b"Traceback" not in answer and len(answer) < 2000
        assert (await served.scrape()).startswith(b"HTTP/1.1 200")
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


async def test_head_is_answered_without_a_body():
    async with Served() as served:
        answer = await served.request(b"HEAD /metrics HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\n")


# -- end to end: the CLI with its defaults ------------------------------------------------------------


@pytest.mark.integration
def test_the_agent_sheds_idle_and_half_sent_connections_and_answers_scrapes_meanwhile(fake_nvml):
    agent = AgentProcess(["--simulate", "--web.max-connections", "40"], fake_nvml.env)
    try:
        agent.wait_for(lambda b: value(b, "kube_gpu_exporter_nvml_up") == 1, what="first cycle")
        idle = [socket.create_connection(("127.0.0.1", agent.port)) for _ in range(30)]
        half = [socket.create_connection(("127.0.0.1", agent.port)) for _ in range(30)]
        for s in half:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: node\r\nX-Slow: ")
        # More connections than the cap, none finished: a scrape still gets its answer.
        assert agent.get("/metrics")[0] == 200
        for path in ("/", "/api/v1/status", "/healthz", "/readyz"):  # routes added elsewhere are allowed
            assert agent.get(path)[0] in (200, 503)
        assert agent.get("/nope")[0] == 404
        for s in idle + half:
            s.settimeout(HttpLimits().read_timeout + 5)  # no complete request: the read deadline
            try:
                assert s.recv(1 << 16) == b""  # closed by the agent (a timeout here raises)
            except ConnectionResetError:
                pass
            s.close()
    finally:
        stderr = agent.stop()
    assert "Traceback" not in stderr, stderr


@pytest.mark.integration
def test_refused_requests_are_counted_by_reason_in_the_exposition(fake_nvml):
    agent = AgentProcess(["--simulate"], fake_nvml.env)
    try:
        body = agent.wait_for(lambda b: value(b, "kube_gpu_exporter_nvml_up") == 1, what="first cycle")
        # Every reason is there before the first refusal, so increase() sees the first one.
        assert value(body, "kube_gpu_exporter_http_rejected_total", reason="method") == 0
        assert value(body, "kube_gpu_exporter_http_rejected_total", reason="connection_limit") == 0
        with socket.create_connection(("127.0.0.1", agent.port)) as s:
            s.sendall(b"DELETE /metrics HTTP/1.1\r\nHost: node\r\n\r\n")
            assert s.recv(1 << 16).startswith(b"HTTP/1.1 405")
        assert agent.get("/nope")[0] == 404
        agent.wait_for(lambda b: value(b, "kube_gpu_exporter_http_rejected_total", reason="method") == 1
                       and value(b, "kube_gpu_exporter_http_rejected_total", reason="path") == 1, what="counted")
    finally:
        agent.stop()
