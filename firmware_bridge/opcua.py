"""OPC-UA through asyncua: subscriptions (sampling interval, deadband) and polling, writes and
method calls, Basic256Sha256 Sign&Encrypt with a certificate and user/password, browse.

Subscribed points are monitored items of one subscription (publishing interval
``publish_ms``); a notification batch becomes one :class:`Sample` (a point seen twice in one
batch starts a new sample, so no value is overwritten). Polled points are read together every
``poll_interval``. A lost session ends the connection; the runner connects again and the
subscription and its monitored items are created afresh on the new session (the machine's
present values arrive first). Library errors are mapped here: a refused certificate or user
is a :class:`SecurityError`, a lost or refused link an :class:`UnreachableError`, a bad status
on one value an :class:`AnswerError` (counted, the point left out).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.common.subscription import DataChangeEvent, Subscription
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.crypto.uacrypto import CertProperties
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography import x509

from firmware_bridge.adapter import Health, Sample, now_ms
from firmware_bridge.codec import scaled
from firmware_bridge.errors import (
    AnswerError,
    CommandError,
    SecurityError,
    UnreachableError,
)
from firmware_bridge.settings import OpcuaDevice, OpcuaPoint

_SECURITY_CODES = {
    StatusCodes.BadSecurityChecksFailed,
    StatusCodes.BadCertificateInvalid,
    StatusCodes.BadCertificateUntrusted,
    StatusCodes.BadCertificateRevoked,
    StatusCodes.BadCertificateTimeInvalid,
    StatusCodes.BadCertificateUriInvalid,
    StatusCodes.BadSecurityPolicyRejected,
    StatusCodes.BadIdentityTokenRejected,
    StatusCodes.BadIdentityTokenInvalid,
    StatusCodes.BadUserAccessDenied,
}


def plain(value: Any) -> Any:
    """An OPC-UA value as telemetry stores it (numbers, strings, booleans, lists)."""
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, dt.datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, ua.LocalizedText):
        return value.Text
    return str(value)


def _convert(point: OpcuaPoint, value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return scaled(point, value)
    return plain(value)


def map_error(device: str, exc: BaseException, what: str) -> Exception:
    """One of ours for a library error."""
    if isinstance(exc, UaStatusCodeError) and exc.code in _SECURITY_CODES:
        return SecurityError(device, f"{what}: {exc}")
    if isinstance(exc, UaStatusCodeError):
        return AnswerError(device, f"{what}: {exc}")
    return UnreachableError(device, f"{what}: {type(exc).__name__}: {exc}")


def application_uri(cert_pem: bytes) -> str:
    """The application URI a certificate names (its first SAN URI)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    if not uris:
        raise ValueError("the certificate names no application URI")
    return str(uris[0])


def _files(config: OpcuaDevice) -> tuple[bytes, bytes, bytes | None, str]:
    """Certificate, key, the machine's certificate and the password, read from their files."""
    cert = Path(config.certificate_file).read_bytes() if config.certificate_file else b""
    key = Path(config.key_file).read_bytes() if config.key_file else b""
    server = (
        Path(config.server_certificate_file).read_bytes()
        if config.server_certificate_file
        else None
    )
    password = Path(config.password_file).read_text().strip() if config.password_file else ""
    return cert, key, server, password


async def make_client(config: OpcuaDevice) -> Client:
    client = Client(config.endpoint, timeout=config.timeout)
    client.name = client.description = f"Cybernetic Edge bridge ({config.id})"
    cert, key, server_cert, password = await asyncio.to_thread(_files, config)
    if config.security == "sign_encrypt":
        client.application_uri = application_uri(cert)
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            CertProperties(cert, extension="pem"),
            CertProperties(key, extension="pem"),
            server_certificate=server_cert and CertProperties(server_cert, extension="pem"),
            mode=ua.MessageSecurityMode.SignAndEncrypt,
        )
    if config.username:
        client.set_user(config.username)
        client.set_password(password)
    return client


class OpcuaAdapter:
    def __init__(self, config: OpcuaDevice, health: Health) -> None:
        self.config = config
        self.device = config.id
        self.health = health

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[_OpcuaConnection]:
        try:
            client = await make_client(self.config)
            await client.connect(auto_reconnect=False)
        except (OSError, TimeoutError, UaError, ConnectionError) as exc:
            raise map_error(self.device, exc, f"connect {self.config.endpoint}") from exc
        except ValueError as exc:  # a certificate file we cannot use
            raise SecurityError(self.device, f"certificate: {exc}") from exc
        lost = asyncio.Event()

        async def on_lost(_exc: Exception) -> None:
            lost.set()

        client.connection_lost_callback = on_lost
        try:
            yield _OpcuaConnection(self, client, lost)
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await client.disconnect()


class _OpcuaConnection:
    def __init__(self, adapter: OpcuaAdapter, client: Client, lost: asyncio.Event) -> None:
        self.adapter = adapter
        self.client = client
        self.lost = lost
        points = adapter.config.points
        self.by_name = {p.name: p for p in points}

    def _fail(self, exc: BaseException, what: str) -> Exception:
        mapped = map_error(self.adapter.device, exc, what)
        if isinstance(mapped, AnswerError):
            self.adapter.health.failed("status", str(mapped))
        return mapped

    async def _subscribe(
        self, points: list[OpcuaPoint]
    ) -> tuple[Subscription, dict[int, OpcuaPoint]]:
        sub = await self.client.create_subscription(
            self.adapter.config.publish_ms, queue_maxsize=100_000
        )
        requests, handles = [], {}
        for i, point in enumerate(points):
            params = ua.MonitoringParameters()
            params.ClientHandle = 10_000 + i
            params.SamplingInterval = point.sampling_ms
            params.QueueSize = 1
            params.DiscardOldest = True
            if point.deadband:
                flt = ua.DataChangeFilter()
                flt.Trigger = ua.DataChangeTrigger.StatusValue
                flt.DeadbandType = 1 if point.deadband_type == "absolute" else 2
                flt.DeadbandValue = point.deadband
                params.Filter = flt
            item = ua.MonitoredItemCreateRequest()
            item.ItemToMonitor = ua.ReadValueId()
            item.ItemToMonitor.NodeId = ua.NodeId.from_string(point.node)
            item.ItemToMonitor.AttributeId = AttributeIds.Value
            item.MonitoringMode = ua.MonitoringMode.Reporting
            item.RequestedParameters = params
            requests.append(item)
            handles[params.ClientHandle] = point
        results = await sub.create_monitored_items(requests)
        for point, result in zip(points, results, strict=True):
            if isinstance(result, ua.StatusCode):
                self.adapter.health.failed("subscribe", f"{point.node}: {result.name}")
        return sub, handles

    async def samples(self) -> AsyncIterator[Sample]:
        config = self.adapter.config
        subscribed = [p for p in config.points if p.mode == "subscribe"]
        polled = [p for p in config.points if p.mode == "poll"]
        queue: asyncio.Queue[Sample] = asyncio.Queue(maxsize=1000)
        try:
            async with asyncio.TaskGroup() as tg:
                if subscribed:
                    sub, handles = await self._subscribe(subscribed)
                    tg.create_task(self._notifications(sub, handles, queue))
                if polled:
                    tg.create_task(self._poll(polled, queue))
                tg.create_task(self._watch_lost())
                while True:
                    yield await queue.get()
        except* (OSError, TimeoutError, UaError, ConnectionError) as group:
            exc = group.exceptions[0]
            raise self._fail(exc, "session") from exc
        except* UnreachableError as group:
            raise group.exceptions[0] from None

    async def _watch_lost(self) -> None:
        await self.lost.wait()
        raise UnreachableError(self.adapter.device, "session lost")

    async def _notifications(
        self, sub: Subscription, handles: dict[int, OpcuaPoint], queue: asyncio.Queue[Sample]
    ) -> None:
        values: dict[str, Any] = {}
        ts = 0
        health = self.adapter.health
        async for event in sub:
            if not isinstance(event, DataChangeEvent):
                continue
            item = event.data.monitored_item
            point = handles.get(item.ClientHandle)
            if point is None:
                continue
            dv = item.Value
            if dv.StatusCode is not None and not dv.StatusCode.is_good():
                health.failed("status", f"{point.node}: {dv.StatusCode.name}")
                continue
            if point.name in values:
                await queue.put(Sample(values, ts))
                values = {}
            values[point.name] = _convert(point, event.value)
            stamp = dv.SourceTimestamp or dv.ServerTimestamp
            ts = int(stamp.timestamp() * 1000) if stamp else now_ms()
            health.reads_ok += 1
            if sub._event_queue is None or sub._event_queue.empty():  # noqa: SLF001 - batch end
                await queue.put(Sample(values, ts))
                values = {}

    async def _poll(self, points: list[OpcuaPoint], queue: asyncio.Queue[Sample]) -> None:
        nodes = [self.client.get_node(p.node) for p in points]
        interval = self.adapter.config.poll_interval
        health = self.adapter.health
        while True:
            started = time.perf_counter()
            try:
                results = await self.client.read_attributes(nodes, AttributeIds.Value)
            except UaStatusCodeError as exc:
                self._fail(exc, "poll")
            else:
                values: dict[str, Any] = {}
                for point, dv in zip(points, results, strict=True):
                    if dv.StatusCode is not None and not dv.StatusCode.is_good():
                        health.failed("status", f"{point.node}: {dv.StatusCode.name}")
                        continue
                    values[point.name] = _convert(point, dv.Value.Value if dv.Value else None)
                health.ok(started)
                if values:
                    await queue.put(Sample(values, now_ms()))
            await asyncio.sleep(interval)

    async def command(self, action: str, args: dict[str, Any]) -> Any:
        device = self.adapter.device
        if action == "write":
            name = args.get("point")
            point = self.by_name.get(name) if isinstance(name, str) else None
            if point is None:
                raise CommandError(device, f"unknown point {name!r}")
            if not point.writable:
                raise CommandError(device, f"point {name!r} is not writable")
            node = self.client.get_node(point.node)
            value = args.get("value")
            try:
                variant_type = await node.read_data_type_as_variant_type()
                if isinstance(value, int | float) and not isinstance(value, bool):
                    value = (value - point.offset) / point.scale
                    if variant_type not in (ua.VariantType.Float, ua.VariantType.Double):
                        value = round(value)
                await node.write_value(ua.DataValue(ua.Variant(value, variant_type)))
            except (UaError, OSError, TimeoutError, ConnectionError) as exc:
                raise CommandError(device, f"write {name}: {exc}") from exc
            return {"point": name, "value": args.get("value")}
        if action == "call":
            name = args.get("method")
            method = next((m for m in self.adapter.config.methods if m.name == name), None)
            if method is None:
                raise CommandError(device, f"unknown method {name!r}")
            call_args = args.get("args", [])
            if not isinstance(call_args, list):
                raise CommandError(device, "call: args must be a list")
            try:
                result = await self.client.get_node(method.object).call_method(
                    ua.NodeId.from_string(method.method), *call_args
                )
            except (UaError, OSError, TimeoutError, ConnectionError) as exc:
                raise CommandError(device, f"call {name}: {exc}") from exc
            return plain(result)
        raise CommandError(device, f"unknown action {action!r} (opcua devices take write, call)")


async def browse(client: Client, root: Node | None = None, depth: int = 3) -> list[dict[str, Any]]:
    """Variables and methods under ``root`` (the Objects folder), for writing a mapping."""
    found: list[dict[str, Any]] = []

    async def walk(node: Node, path: str, level: int) -> None:
        for child in await node.get_children():
            name = (await child.read_browse_name()).Name
            node_class = await child.read_node_class()
            here = f"{path}/{name}" if path else name
            if node_class == ua.NodeClass.Variable:
                try:
                    vtype = (await child.read_data_type_as_variant_type()).name
                except UaError:
                    vtype = "?"
                found.append({"path": here, "node": child.nodeid.to_string(), "type": vtype})
            elif node_class == ua.NodeClass.Method:
                found.append({"path": here, "node": child.nodeid.to_string(), "type": "method"})
            elif node_class == ua.NodeClass.Object and level < depth and name != "Server":
                await walk(child, here, level + 1)

    await walk(root or client.nodes.objects, "", 1)
    return found
