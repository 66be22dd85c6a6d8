"""Link keys renewed on schedule by a running gateway (enrolment renewal): nothing lost."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cybernetic.devices import publish_readings
from cybernetic.stack import Stack


async def test_link_secret_renewals_keep_every_reading(tmp_path: Path) -> None:
    renew_fast = {"uplink": {"renew_link_every": 1.0, "renew_check_every": 0.5}}
    with Stack(tmp_path / "s", tls=True, gateway=renew_fast) as stack:
        pw = stack.add_device("renew-dev")
        stack.start()
        await asyncio.to_thread(stack.wait_gateway_ready)
        # ~6 s of readings across several renewals of the link secret
        await publish_readings(
            stack.edge.host, stack.edge.device_port, "renew-dev", pw, range(1, 1201), rate=200
        )
        count = await asyncio.to_thread(stack.wait_cloud_count, 1200, 60)
        log = stack.log("gateway")
        assert count == 1200, log[-3000:] + stack.log("cloud")[-3000:]
        assert log.count("link keys renewed") >= 2, log[-3000:]
        assert "envelope refused" not in stack.log("cloud")
