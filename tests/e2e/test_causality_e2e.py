"""Why did the gateway do that? The causality graph through the running daemons: a fleet rule
fires on a reading, its alert reaches the cloud, S4 proposes a mitigation, an operator pushes
it with ``--cause``, the enrolled gateway applies the signed bundle and enforces it on the next
reading; ``cybernetic trace`` walks from the enforcement back to the reading that fired the
rule, and the gateway's audit chain holds the enforcement (docs/audit.md, "Causality")."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from cybernetic.stack import Stack
from tests.e2e.test_limits_e2e import fleet, wait_for
from tests.e2e.test_policy_bundles_e2e import metric
from tests.e2e.test_rules_e2e import _publish


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cybernetic", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def _proposals(config: str) -> list[dict[str, object]]:
    out = cli("mitigation", "list", "--json", "-c", config)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


async def test_an_enforced_mitigation_traces_back_to_the_reading_that_raised_the_alert(
    tmp_path: Path,
) -> None:
    stack = Stack(tmp_path / "s", tls=True)
    try:
        password = stack.add_device("door-01")
        stack.start_brokers()
        stack.start_cloud()
        await asyncio.to_thread(stack.wait_cloud_ready)
        stack.start_gateway()
        await asyncio.to_thread(stack.wait_gateway_ready)
        config = str(stack.cloud_config)
        gw = stack.gateway_id
        rule = await asyncio.to_thread(
            fleet, stack.cloud_config, "pattern", "set", f"gw/{gw}", "tamper",
            "--when", "humidity > 90 => alert", "--wait", "20",
        )  # fmt: skip
        assert rule.returncode == 0, (rule.stdout, rule.stderr)
        await wait_for(
            lambda: any(
                e.name == "rules.swapped" and e.attrs.get("patterns", 0) >= 1
                for e in stack.cloud_events()
            ),
            "the gateway running the fleet rule",
        )
        await _publish(stack, "door-01", password, [95.0], start=1)  # fires the rule
        await wait_for(lambda: bool(_proposals(config)), "a mitigation proposed for the alert")
        (proposal,) = _proposals(config)
        assert proposal["action"] == "quarantine", proposal
        mid = str(proposal["id"])
        source = await asyncio.to_thread(cli, "mitigation", "show", mid, "--source", "-c", config)
        assert source.returncode == 0, source.stderr
        policy_file = tmp_path / "mitigation.policy"
        policy_file.write_text(source.stdout)
        pushed = await asyncio.to_thread(
            cli, "policy", "push", str(policy_file), "--version", "1", "--cause", mid,
            "-c", config,
        )  # fmt: skip
        assert pushed.returncode == 0, (pushed.stdout, pushed.stderr)
        await wait_for(
            lambda: metric(stack, "cybernetic_policy_bundle_version") == 1,
            "the gateway applying the bundle",
        )
        await _publish(stack, "door-01", password, [20.0], start=2)  # quarantined: denied
        await wait_for(
            lambda: any(e.name == "policy.enforced" for e in stack.cloud_events()),
            "the enforcement reaching the cloud",
        )
        recent = await asyncio.to_thread(cli, "trace", "--recent", "event", "-c", config)
        assert recent.returncode == 0, recent.stderr
        (line,) = [x for x in recent.stdout.splitlines() if "policy.enforced" in x]
        enforced = line.split()[0]
        walked = await asyncio.to_thread(cli, "trace", enforced, "--json", "-c", config)
        assert walked.returncode == 0, walked.stderr
        trace = json.loads(walked.stdout)
        kinds = {(e["kind"], e["dst"].split(":")[0]) for e in trace["edges"]}
        assert ("enforced", "event") in kinds
        assert ("pushed", "policy") in kinds
        assert ("proposed", "mitigation") in kinds
        nodes = {n["id"]: n for n in trace["nodes"]}
        fired = nodes["reading:door-01/b1/1"]
        assert fired["attrs"]["values"] == {"humidity": 95.0}
        assert fired["attrs"]["gateway"] == gw
        printed = await asyncio.to_thread(cli, "trace", enforced, "-c", config)
        assert "<- pushed mitigation:" in printed.stdout, printed.stdout
        assert "<- matched reading:door-01/b1/1" in printed.stdout
        # the enforcement is in the gateway's chain, shipped to the cloud's log, which verifies
        await wait_for(
            lambda: (
                "policy.enforced"
                in cli("audit", "show", "--kind", "policy.enforced", "-c", config).stdout
            ),
            "the enforcement in the audit log",
        )
        checked = await asyncio.to_thread(cli, "audit", "verify", "-c", config)
        assert checked.returncode == 0, checked.stdout
        shown = await asyncio.to_thread(
            cli, "audit", "show", "--kind", "trust.enrolled", "-c", config
        )
        assert "trust.enrolled" in shown.stdout, shown.stdout
    finally:
        stack.close()
