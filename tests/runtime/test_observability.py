"""The admin endpoint answers from the status board; metrics carry the documented names."""

from __future__ import annotations

import aiohttp

from runtime.config import AdminSettings
from runtime.observability import AdminServer, ConnectorMetrics, StatusBoard


async def test_admin_endpoint_reflects_the_board() -> None:
    board = StatusBoard(connector="test-sink", name="obs-1", side="sink", metrics=ConnectorMetrics("test-sink", "obs-1"))
    server = AdminServer(AdminSettings(host="127.0.0.1", port=0), board)
    await server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 200
            async with http.get(f"{base}/readyz") as response:
                assert response.status == 503
                assert "mesh session is down" in (await response.json())["not_ready_because"]
            board.set_mesh(True)
            board.set_state("running")
            async with http.get(f"{base}/readyz") as response:
                assert response.status == 200
            board.set_dependency("database unreachable")
            async with http.get(f"{base}/readyz") as response:
                assert response.status == 503
            board.metrics.records_out.inc(3)
            async with http.get(f"{base}/metrics") as response:
                text = await response.text()
            assert 'meshconnect_records_out_total{connector="test-sink",name="obs-1"} 3.0' in text
            assert 'meshconnect_ready{connector="test-sink",name="obs-1"} 0.0' in text
            async with http.get(f"{base}/status") as response:
                status = await response.json()
            assert status["connector"] == "test-sink"
            assert status["state"] == "running"
            assert status["dependency_error"] == "database unreachable"
    finally:
        await server.stop()
