"""The MQTT contract: every topic and every JSON payload that the server and the agents exchange.

This module is the only place a topic string is spelled. Both sides build topics with the
``*_topic`` functions, subscribe with the ``*_filter`` functions and classify what they receive
with :func:`parse_topic`; payloads are the ``Message`` dataclasses below, validated strictly on
decode (see :mod:`edgeops.schema`). Bundle chunks are the one binary payload: raw bytes whose
sha256 and size the manifest announces, so they need no envelope.

Topic tree (``{root}`` is ``edgeops/v1/{fleet}``)::

    {root}/devices/{device}/status       device -> retained   Status (birth; last will "offline")
    {root}/devices/{device}/reported     device -> retained   Reported (what actually runs)
    {root}/devices/{device}/telemetry    device ->            Telemetry (one window, flat JSON)
    {root}/devices/{device}/drift        device ->            DriftDetail (per feature)
    {root}/devices/{device}/events       device ->            Event
    {root}/devices/{device}/desired      -> device retained   Desired (version to run)
    {root}/devices/{device}/cmd          -> device            Command
    {root}/devices/{device}/cmd/reply    device ->            CommandReply
    {root}/bundles/{digest}/manifest     -> devices retained  Manifest JSON (edgeops.manifest)
    {root}/bundles/{digest}/signature    -> devices retained  BundleSignature over the manifest bytes
    {root}/bundles/{digest}/chunks/{i}   -> devices retained  raw bytes of transfer chunk i
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Annotated, Any

from edgeops.errors import TopicError
from edgeops.schema import MaxLen, Message, Pattern, Range, Record

PROTOCOL_NAME = "edgeops"
PROTOCOL_VERSION = "v1"
#: Fleet and device identifiers: safe in topics, file names and SQL, no MQTT wildcards.
ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
#: Bundle digests: lowercase hex sha256 of the canonical manifest.
DIGEST_PATTERN = r"[0-9a-f]{64}"
_ID_RE = re.compile(ID_PATTERN)
_DIGEST_RE = re.compile(DIGEST_PATTERN)

#: QoS for everything that matters; the contract never uses QoS 0 or 2.
QOS = 1


class DeviceChannel(str, enum.Enum):
    """The per-device topics; the value is the topic suffix after ``devices/{device}/``."""

    STATUS = "status"
    REPORTED = "reported"
    TELEMETRY = "telemetry"
    DRIFT = "drift"
    EVENTS = "events"
    DESIRED = "desired"
    CMD = "cmd"
    CMD_REPLY = "cmd/reply"


#: Channels a device publishes on and which of them are retained.
DEVICE_PUBLISHED = {
    DeviceChannel.STATUS: True,
    DeviceChannel.REPORTED: True,
    DeviceChannel.TELEMETRY: False,
    DeviceChannel.DRIFT: False,
    DeviceChannel.EVENTS: False,
    DeviceChannel.CMD_REPLY: False,
}


def check_id(value: str, what: str = "identifier") -> str:
    """Return ``value`` if it is a valid fleet or device id, else raise TopicError."""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise TopicError(f"invalid {what} {value!r}: expected {ID_PATTERN}")
    return value


def check_digest(value: str) -> str:
    """Return ``value`` if it is a lowercase hex sha256, else raise TopicError."""
    if not isinstance(value, str) or not _DIGEST_RE.fullmatch(value):
        raise TopicError(f"invalid bundle digest {value!r}: expected 64 lowercase hex digits")
    return value


def fleet_root(fleet: str) -> str:
    return f"{PROTOCOL_NAME}/{PROTOCOL_VERSION}/{check_id(fleet, 'fleet')}"


def device_topic(fleet: str, device_id: str, channel: DeviceChannel) -> str:
    return f"{fleet_root(fleet)}/devices/{check_id(device_id, 'device id')}/{channel.value}"


def device_filter(fleet: str, channel: DeviceChannel) -> str:
    """Subscription filter for one channel of every device in the fleet."""
    return f"{fleet_root(fleet)}/devices/+/{channel.value}"


def manifest_topic(fleet: str, digest: str) -> str:
    return f"{fleet_root(fleet)}/bundles/{check_digest(digest)}/manifest"


def signature_topic(fleet: str, digest: str) -> str:
    return f"{fleet_root(fleet)}/bundles/{check_digest(digest)}/signature"


def chunk_topic(fleet: str, digest: str, index: int) -> str:
    if type(index) is not int or index < 0:
        raise TopicError(f"invalid chunk index {index!r}")
    return f"{fleet_root(fleet)}/bundles/{check_digest(digest)}/chunks/{index}"


def chunks_filter(fleet: str, digest: str) -> str:
    """Every chunk of one bundle (a fresh download; a resumed one subscribes only to what it lacks)."""
    return f"{fleet_root(fleet)}/bundles/{check_digest(digest)}/chunks/+"


def bundle_filter(fleet: str) -> str:
    """Every retained artifact of every bundle (for clearing them)."""
    return f"{fleet_root(fleet)}/bundles/#"


class TopicKind(str, enum.Enum):
    DEVICE = "device"
    MANIFEST = "manifest"
    SIGNATURE = "signature"
    CHUNK = "chunk"


@dataclass(frozen=True)
class ParsedTopic:
    """What a received topic addresses."""

    fleet: str
    kind: TopicKind
    device_id: str | None = None
    channel: DeviceChannel | None = None
    digest: str | None = None
    chunk_index: int | None = None


_CHANNELS = {c.value: c for c in DeviceChannel}


def parse_topic(topic: str) -> ParsedTopic:
    """Classify a topic of the contract; anything else raises TopicError."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[0] != PROTOCOL_NAME or parts[1] != PROTOCOL_VERSION:
        raise TopicError(f"not an {PROTOCOL_NAME}/{PROTOCOL_VERSION} topic: {topic!r}")
    fleet = check_id(parts[2], "fleet")
    if parts[3] == "devices":
        device_id = check_id(parts[4], "device id")
        channel = _CHANNELS.get("/".join(parts[5:]))
        if channel is None:
            raise TopicError(f"unknown device channel in {topic!r}")
        return ParsedTopic(fleet, TopicKind.DEVICE, device_id=device_id, channel=channel)
    if parts[3] == "bundles":
        digest = check_digest(parts[4])
        if parts[5:] == ["manifest"]:
            return ParsedTopic(fleet, TopicKind.MANIFEST, digest=digest)
        if parts[5:] == ["signature"]:
            return ParsedTopic(fleet, TopicKind.SIGNATURE, digest=digest)
        if len(parts) == 7 and parts[5] == "chunks" and parts[6].isdigit() and len(parts[6]) < 10:
            return ParsedTopic(fleet, TopicKind.CHUNK, digest=digest, chunk_index=int(parts[6]))
    raise TopicError(f"unknown topic {topic!r}")


# --- payloads ----------------------------------------------------------------------------------


class Presence(str, enum.Enum):
    ONLINE = "online"
    OFFLINE = "offline"


class UpdatePhase(str, enum.Enum):
    """Where a device is in taking a new version (DESIGN.md, the update state machine)."""

    IDLE = "idle"
    FETCHING = "fetching"
    VERIFYING = "verifying"
    STAGED = "staged"
    ACTIVATING = "activating"
    PROBATION = "probation"
    COMMITTED = "committed"
    FAILED = "failed"


class EventKind(str, enum.Enum):
    AGENT_STARTED = "agent_started"
    #: Every transition of the update state machine ("fetching -> verifying").
    UPDATE_STATE = "update_state"
    UPDATE_STARTED = "update_started"
    UPDATE_COMMITTED = "update_committed"
    UPDATE_FAILED = "update_failed"
    CHUNK_REJECTED = "chunk_rejected"
    DESIRED_REJECTED = "desired_rejected"
    MODEL_LOADED = "model_loaded"
    ROLLBACK = "rollback"
    DRIFT_ALERT = "drift_alert"


class CommandName(str, enum.Enum):
    PING = "ping"
    FLUSH = "flush"
    REPORT = "report"


DeviceId = Annotated[str, Pattern(ID_PATTERN)]
Digest = Annotated[str, Pattern(DIGEST_PATTERN)]
Version = Annotated[str, Pattern(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")]
EpochMs = Annotated[int, Range(ge=0)]
Count = Annotated[int, Range(ge=0)]
WindowId = Annotated[str, Pattern(r"[A-Za-z0-9_.:-]{1,128}")]
CorrelationId = Annotated[str, Pattern(r"[A-Za-z0-9_.:-]{1,64}")]
Text = Annotated[str, MaxLen(2000)]


@dataclass(frozen=True)
class BundleRef(Record):
    """A model version as devices know it: name, version and the digest that pins its bytes."""

    name: DeviceId
    version: Version
    digest: Digest

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class ErrorInfo(Record):
    """An error as it travels: a stable code (``EdgeOpsError.code``) and a human message."""

    code: Annotated[str, Pattern(r"[a-z][a-z0-9_]{0,63}")]
    message: Text


@dataclass(frozen=True)
class Signature(Record):
    """A detached Ed25519 signature; ``key_id`` names the key in the verifier's trust list.

    What is signed: for a bundle, the canonical manifest bytes; for a desired message, the
    canonical JSON of the message without its ``signature`` field (edgeops.signing).
    """

    algorithm: Annotated[str, Pattern("ed25519")]
    key_id: Annotated[str, Pattern(r"[0-9a-f]{16}")]
    value: Annotated[str, Pattern(r"[A-Za-z0-9+/]{86}==")]


@dataclass(frozen=True)
class BundleSignature(Message):
    """Published retained next to the manifest; the same JSON is ``manifest.sig`` inside the bundle."""

    signature: Signature


@dataclass(frozen=True)
class Status(Message):
    """Presence. Retained; the agent's last will is the same message with ``offline``."""

    device_id: DeviceId
    state: Presence
    ts: EpochMs
    agent_version: str = ""
    active: BundleRef | None = None
    hardware: Annotated[dict[str, str], MaxLen(32)] = field(default_factory=dict)


@dataclass(frozen=True)
class Reported(Message):
    """What the device really runs and how far its current update got. Retained."""

    device_id: DeviceId
    ts: EpochMs
    phase: UpdatePhase
    active: BundleRef | None = None
    previous: BundleRef | None = None
    target: BundleRef | None = None
    rollout_id: str | None = None
    chunks_have: Count = 0
    chunks_total: Count = 0
    last_error: ErrorInfo | None = None


@dataclass(frozen=True)
class Telemetry(Message):
    """One window of measurements. Flat, with units in the names, so any MQTT dashboard can chart it.

    ``window_id`` is unique per window (device, boot, sequence): the server drops QoS 1 duplicates
    by it. ``ts`` is the window's end in epoch milliseconds.
    """

    device_id: DeviceId
    window_id: WindowId
    ts: EpochMs
    window_s: Annotated[float, Range(ge=0)]
    model: str | None = None
    model_version: str | None = None
    inferences: Count = 0
    errors: Count = 0
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    latency_ms_p99: float | None = None
    drift_score: float | None = None
    drift_features_over: Count = 0
    cpu_percent: float | None = None
    rss_mb: float | None = None
    temperature_c: float | None = None
    #: Messages waiting in the device's on-disk spool, and how many it ever evicted when full.
    spool_rows: Count = 0
    spool_evicted_total: Count = 0


@dataclass(frozen=True)
class FeatureDriftDetail(Record):
    """One feature's drift; ``None`` where a statistic is undefined (e.g. no finite samples)."""

    index: Count
    psi: float | None
    js_distance: float | None
    ks_statistic: float | None
    ks_pvalue: float | None
    wasserstein: float | None
    mean_shift_sd: float | None
    nan_rate: float | None
    out_of_range_rate: float | None


@dataclass(frozen=True)
class DriftDetail(Message):
    """Per-feature drift for the window named by ``window_id``."""

    device_id: DeviceId
    window_id: WindowId
    ts: EpochMs
    n_samples: Count
    overall_score: float
    drifted_features: Annotated[list[int], MaxLen(4096)]
    features: Annotated[list[FeatureDriftDetail], MaxLen(4096)]


@dataclass(frozen=True)
class Event(Message):
    device_id: DeviceId
    ts: EpochMs
    kind: EventKind
    message: Text = ""
    bundle: BundleRef | None = None
    error: ErrorInfo | None = None


@dataclass(frozen=True)
class Desired(Message):
    """The version a device should run. Retained; re-sending it is a no-op on the device."""

    bundle: BundleRef
    manifest_topic: str
    issued_at: EpochMs
    rollout_id: str | None = None
    #: Marks a deliberate downgrade; an agent refuses an older version without it.
    rollback: bool = False
    signature: Signature | None = None


@dataclass(frozen=True)
class Command(Message):
    correlation_id: CorrelationId
    command: CommandName
    args: Annotated[dict[str, str], MaxLen(32)] = field(default_factory=dict)


@dataclass(frozen=True)
class CommandReply(Message):
    correlation_id: CorrelationId
    ok: bool
    result: Annotated[dict[str, Any], MaxLen(256)] = field(default_factory=dict)
    error: ErrorInfo | None = None


#: Which message type travels on which device channel.
CHANNEL_MESSAGES: dict[DeviceChannel, type[Message]] = {
    DeviceChannel.STATUS: Status,
    DeviceChannel.REPORTED: Reported,
    DeviceChannel.TELEMETRY: Telemetry,
    DeviceChannel.DRIFT: DriftDetail,
    DeviceChannel.EVENTS: Event,
    DeviceChannel.DESIRED: Desired,
    DeviceChannel.CMD: Command,
    DeviceChannel.CMD_REPLY: CommandReply,
}


def decode_device_message(channel: DeviceChannel, payload: bytes) -> Message:
    """Decode the payload of a device channel into its message type (raises ProtocolError)."""
    return CHANNEL_MESSAGES[channel].decode(payload)


def device_id_mismatch(parsed: ParsedTopic, message: Message) -> bool:
    """True when a device-published message names another device than its topic (spoofing or a bug)."""
    claimed = getattr(message, "device_id", None)
    return claimed is not None and claimed != parsed.device_id


