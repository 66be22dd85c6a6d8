"""A pattern authored in the cloud for a zone reaches that zone's gateway and fires; one for
another gateway does not: the real daemons and brokers, `cybernetic fleet pattern` through the
running cloud's control socket, sync down, the gateway's rules service picking the
``pattern.fleet`` rows meant for it (docs/rules.md, "Patterns from the cloud")."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cybernetic.devices import publish_readings
from cybernetic.stack import Stack
from tests.e2e.test_limits_e2e import fleet, wait_for


async def test_a_zone_pattern_fires_on_its_gateway_and_another_gateways_does_not(
    tmp_path: Path,
) -> None:
    with Stack(tmp_path / "s") as stack:
        password = stack.add_device("sensor")
        stack.start()
        await asyncio.to_thread(stack.wait_gateway_ready)
        gw = stack.gateway_id

        # the cloud learns the gateway's zone (the zones row), so zone/north counts it
        zoned = await asyncio.to_thread(
            fleet, stack.cloud_config, "zone", "set", gw, "north", "--wait", "20"
        )
        assert zoned.returncode == 0, (zoned.stdout, zoned.stderr)

        # a rule that does not compile is refused before anything is written: exit 2
        bad = await asyncio.to_thread(
            fleet, stack.cloud_config, "pattern", "set", "zone/north", "bad", "--when", "temp >"
        )
        assert bad.returncode == 2, bad
        assert "Traceback" not in bad.stderr
        assert "nothing written" in bad.stderr

        # for another gateway: synced to ours too, never run here
        other = await asyncio.to_thread(
            fleet,
            stack.cloud_config,
            "pattern",
            "set",
            "gw/gw-elsewhere",
            "theirs",
            "--when",
            "temp > 28 => alert",
        )
        assert other.returncode == 0, other.stderr
        # for our zone, waited for: acknowledged by the one gateway of the zone
        mine = await asyncio.to_thread(
            fleet,
            stack.cloud_config,
            "pattern",
            "set",
            "zone/north",
            "warm",
            "--when",
            "temp > 28 => alert",
            "--wait",
            "20",
        )
        assert mine.returncode == 0, (mine.stdout, mine.stderr, stack.log("cloud")[-2000:])
        assert "applied on 1 of 1" in mine.stdout, mine.stdout

        listed = await asyncio.to_thread(fleet, stack.cloud_config, "pattern", "list")
        assert "zone/north/warm" in listed.stdout
        assert "gw/gw-elsewhere/theirs" in listed.stdout
        bad_listed = await asyncio.to_thread(
            fleet, stack.cloud_config, "pattern", "list", "zone/north"
        )
        assert "theirs" not in bad_listed.stdout
        assert "bad" not in bad_listed.stdout

        # temp = 20 + seq % 10: seq 9 and 19 are above 28
        def events(name: str) -> list[str]:
            return [e.source for e in stack.cloud_events() if e.name == name]

        async def swapped_with_warm() -> None:
            await wait_for(
                lambda: any(
                    e.name == "rules.swapped" and e.attrs.get("patterns", 0) >= 1
                    for e in stack.cloud_events()
                ),
                "the gateway swapping in the fleet rule",
                within_s=20,
            )

        await swapped_with_warm()
        await publish_readings(stack.edge.host, stack.device_port, "sensor", password, range(20))
        await wait_for(lambda: len(events("rules.warm")) == 2, "the zone's rule firing twice")
        assert set(events("rules.warm")) == {"sensor"}
        assert events("rules.theirs") == []
        applied = await asyncio.to_thread(
            fleet, stack.cloud_config, "applied", "pattern.fleet", "zone/north/warm"
        )
        assert applied.returncode == 0, applied.stderr
        assert "applied on 1 of 1" in applied.stdout

        # removed in the cloud: it stops firing on the gateway
        gone = await asyncio.to_thread(
            fleet, stack.cloud_config, "pattern", "remove", "zone/north", "warm", "--wait", "20"
        )
        assert gone.returncode == 0, gone.stderr
        await wait_for(
            lambda: any(
                e.name == "rules.swapped" and e.attrs.get("patterns") == 0
                for e in stack.cloud_events()
            ),
            "the gateway dropping the rule",
            within_s=20,
        )
        await publish_readings(
            stack.edge.host, stack.device_port, "sensor", password, range(20, 40)
        )
        await wait_for(lambda: stack.cloud_count() >= 40, "the later readings stored", within_s=20)
        assert len(events("rules.warm")) == 2
        assert events("rules.theirs") == []
