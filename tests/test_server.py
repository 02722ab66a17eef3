"""HTTP endpoints over the simulated node: negotiation, gzip, health, and the CLI as a process."""

from __future__ import annotations

import gzip
import signal
import subprocess
import sys
import tempfile
import urllib.request

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import wait_until
from e2e import free_port

from exporter.cli import build_agent
from exporter.config import parse_config
from exporter.serve.routes import make_app
from exporter.sources.nvml.cost import GROUPS


@pytest.fixture
async def client():
    agent = build_agent(parse_config(["--simulate", "--collector.interval", "60"], environ={}))
    async with TestClient(TestServer(make_app(agent))) as test_client:
        test_client.agent = agent
        yield test_client
    await agent.stop()


async def test_metrics_is_503_until_the_first_collection_then_serves_the_snapshot(client):
    response = await client.get("/metrics")
    assert response.status == 503
    assert (await client.get("/readyz")).status == 503
    await client.agent.collect_once()
    response = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    body = await response.text()
    assert 'kube_gpu_exporter_build_info{python_version="' in body and 'simulated="true"' in body
    assert body.count("nvidia_gpu_up{") == 4


async def test_openmetrics_and_gzip_are_negotiated(client):
    await client.agent.collect_once()
    response = await client.get(
        "/metrics",
        headers={"Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5", "Accept-Encoding": "gzip"},
        auto_decompress=False,
    )
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.headers["Content-Encoding"] == "gzip"
    body = gzip.decompress(await response.read()).decode()
    assert body.endswith("# EOF\n")
    assert "# TYPE nvidia_gpu_energy_joules counter" in body

    response = await client.get("/metrics", headers={"Accept-Encoding": "identity"}, auto_decompress=False)
    assert "Content-Encoding" not in response.headers
    assert (await response.read()).startswith(b"# HELP")


PROMETHEUS = {"Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
              "Accept-Encoding": "gzip"}
TEXT_GZIP = {"Accept": "text/plain", "Accept-Encoding": "gzip"}


async def test_a_cycle_writes_openmetrics_and_the_text_format_only_once_asked_for(client):
    first = await client.agent.collect_once()
    assert (await client.get("/metrics", headers=PROMETHEUS)).status == 200
    assert not first.text_ready(gzipped=False) and not first.text_ready(gzipped=True)
    second = await client.agent.collect_once()
    assert not second.text_ready(gzipped=False)  # nobody asked in the last cycle either
    response = await client.get("/metrics", headers=TEXT_GZIP, auto_decompress=False)  # written now
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert gzip.decompress(await response.read()) == second.text
    assert second.text_ready(gzipped=True)
    third = await client.agent.collect_once()
    assert third.text_ready(gzipped=True)  # asked for in the last cycle: written with this one
    fourth = await client.agent.collect_once()
    assert not fourth.text_ready(gzipped=False)
    # Both formats carry the same samples.
    om_lines = fourth.openmetrics.decode().splitlines()
    assert [line for line in fourth.text.decode().splitlines() if not line.startswith("#")] == [
        line for line in om_lines if not line.startswith("#")]


async def test_health_endpoints_and_landing_page(client):
    assert (await client.get("/healthz")).status == 200
    await client.agent.collect_once()
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.text()).strip() == "ok"
    landing = await client.get("/")
    assert 'href="metrics"' in await landing.text()


async def test_the_same_bytes_are_served_until_the_next_cycle(client):
    await client.agent.collect_once()
    first = await (await client.get("/metrics")).read()
    second = await (await client.get("/metrics")).read()
    assert first == second
    await client.agent.collect_once()
    third = await (await client.get("/metrics")).read()
    assert third != first  # the collection timestamp moved at least


def answered(url: str) -> bytes:
    """``url``'s body once it answers 200 (the agent starts, then answers 503 until its first cycle)."""
    def get() -> bytes:
        with urllib.request.urlopen(url, timeout=2) as response:
            assert response.status == 200, response.status
            return response.read()

    return wait_until(get, timeout=20, interval=0.1, ignore=(OSError,), message=f"a 200 from {url}")


@pytest.mark.integration
def test_cli_serves_the_simulated_node_and_exits_cleanly_on_sigterm():
    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe nobody reads until the end
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--simulate", "--kubernetes.enabled",
         "--web.listen-address", f"127.0.0.1:{port}", "--collector.interval", "1"],
        stderr=log, text=True,
    )
    try:
        body = answered(f"http://127.0.0.1:{port}/metrics")
        assert b'nvidia_gpu_allocation_info{' in body and b'workload_kind="CronJob"' in body
        answered(f"http://127.0.0.1:{port}/readyz")
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=5)
    finally:
        process.kill()
        log.seek(0)
        stderr = log.read()
    assert process.returncode == 0, stderr
    assert "SIMULATED" in stderr and "shutting down" in stderr


@pytest.mark.integration
def test_once_prints_the_exposition():
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--simulate", "--once"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# HELP nvidia_gpu_info")
    assert 'nvidia_gpu_mig_info{' in result.stdout
    # The simulated backend's own time, by NVML's query groups: the same series as on a real node.
    durations = {line.split('"')[1]: float(line.rsplit(" ", 1)[1]) for line in result.stdout.splitlines()
                 if line.startswith("kube_gpu_exporter_nvml_query_duration_seconds{")}
    assert set(durations) == set(GROUPS)
    assert durations["activity"] > 0 and durations["profiling"] > 0 and durations["identity"] == 0
