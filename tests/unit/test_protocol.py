"""The MQTT contract: every message round-trips, every kind of bad payload raises its own error."""

from __future__ import annotations

import json

import pytest

from edgeops import protocol as p
from edgeops.errors import PayloadDecodeError, SchemaValidationError, SchemaVersionError, TopicError
from edgeops.schema import MAX_JSON_BYTES

DIGEST = "ab" * 32
REF = p.BundleRef(name="digits", version="1", digest=DIGEST)
ERR = p.ErrorInfo(code="checksum_mismatch", message="chunk 3")

EXAMPLES: list[p.Message] = [
    p.Status(device_id="d1", state=p.Presence.ONLINE, ts=1, agent_version="0.1.0", active=REF,
             hardware={"machine": "aarch64"}),
    p.Status(device_id="d1", state=p.Presence.OFFLINE, ts=2),
    p.Reported(device_id="d1", ts=3, phase=p.UpdatePhase.FETCHING, active=REF, previous=None, target=REF,
               rollout_id="r1", chunks_have=2, chunks_total=5, last_error=ERR),
    p.Telemetry(device_id="d1", window_id="d1:abc:1", ts=4, window_s=10.0, model="digits", model_version="1",
                inferences=100, errors=1, latency_ms_p50=0.1, latency_ms_p95=0.2, latency_ms_p99=0.3,
                drift_score=0.01, drift_features_over=0, cpu_percent=3.5, rss_mb=60.1, temperature_c=None),
    p.DriftDetail(device_id="d1", window_id="d1:abc:1", ts=4, n_samples=100, overall_score=0.2,
                  drifted_features=[1], features=[p.FeatureDriftDetail(1, 0.3, 0.2, 0.1, 0.01, 0.5, 1.2, 0.0, None)]),
    p.Event(device_id="d1", ts=5, kind=p.EventKind.UPDATE_FAILED, message="bad", bundle=REF, error=ERR),
    p.Desired(bundle=REF, manifest_topic=p.manifest_topic("f", DIGEST), issued_at=6, rollout_id=None, rollback=True),
    p.Desired(bundle=REF, manifest_topic="t", issued_at=6,
              signature=p.Signature(algorithm="ed25519", key_id="0123456789abcdef", value="A" * 86 + "==")),
    p.BundleSignature(signature=p.Signature(algorithm="ed25519", key_id="0123456789abcdef", value="A" * 86 + "==")),
    p.Command(correlation_id="c-1", command=p.CommandName.PING, args={"a": "b"}),
    p.CommandReply(correlation_id="c-1", ok=True, result={"ts": 7, "nested": {"x": [1, 2]}}),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: p.Message) -> None:
    encoded = message.encode()
    decoded = type(message).decode(encoded)
    assert decoded == message
    assert decoded.encode() == encoded
    assert json.loads(encoded)["schema_version"] == type(message).SCHEMA_VERSION


def test_every_channel_has_a_message_type() -> None:
    assert set(p.CHANNEL_MESSAGES) == set(p.DeviceChannel)
    covered = {type(m) for m in EXAMPLES}
    assert set(p.CHANNEL_MESSAGES.values()) <= covered


def _status(**override: object) -> bytes:
    data = {"schema_version": 1, "device_id": "d1", "state": "online", "ts": 1}
    data.update(override)
    return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"\xff\xfe not utf-8", PayloadDecodeError),
        (b"{not json", PayloadDecodeError),
        (b"[1, 2]", PayloadDecodeError),
        (b'{"schema_version": 1, "device_id": "d1", "state": "online", "ts": NaN}', PayloadDecodeError),
        (b"", PayloadDecodeError),
        (b"x" * (MAX_JSON_BYTES + 1), PayloadDecodeError),
        (_status(schema_version=...), SchemaVersionError),
        (_status(schema_version="1"), SchemaVersionError),
        (_status(schema_version=2), SchemaVersionError),
        (_status(ts=...), SchemaValidationError),
        (_status(ts="1"), SchemaValidationError),
        (_status(ts=True), SchemaValidationError),
        (_status(ts=-5), SchemaValidationError),
        (_status(state="sleeping"), SchemaValidationError),
        (_status(device_id="a/b"), SchemaValidationError),
        (_status(device_id="+"), SchemaValidationError),
        (_status(extra_field=1), SchemaValidationError),
        (_status(active={"name": "m", "version": "1"}), SchemaValidationError),
        (_status(active={"name": "m", "version": "1", "digest": "XYZ"}), SchemaValidationError),
        (_status(hardware={"k": 1}), SchemaValidationError),
        (_status(hardware=[]), SchemaValidationError),
    ],
)
def test_invalid_payloads_raise_specific_errors(payload: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        p.Status.decode(payload)


def test_errors_are_value_errors_with_stable_codes() -> None:
    with pytest.raises(ValueError) as info:
        p.Status.decode(_status(state="nope"))
    assert info.value.code == "schema_invalid"  # type: ignore[attr-defined]
    assert "Status.state" in str(info.value)


def test_float_fields_accept_integers_but_not_booleans() -> None:
    raw = json.loads(EXAMPLES[3].encode())
    raw["window_s"] = 10
    assert p.Telemetry.from_dict(raw).window_s == 10.0
    raw["window_s"] = True
    with pytest.raises(SchemaValidationError):
        p.Telemetry.from_dict(raw)


def test_encoding_refuses_nan() -> None:
    bad = p.Telemetry(device_id="d1", window_id="w", ts=1, window_s=float("nan"))
    with pytest.raises(ValueError):
        bad.encode()


def test_topics_build_and_parse_back() -> None:
    for channel in p.DeviceChannel:
        topic = p.device_topic("fleet-a", "dev.1", channel)
        parsed = p.parse_topic(topic)
        assert (parsed.fleet, parsed.kind, parsed.device_id, parsed.channel) == (
            "fleet-a", p.TopicKind.DEVICE, "dev.1", channel)
    parsed = p.parse_topic(p.manifest_topic("f", DIGEST))
    assert (parsed.kind, parsed.digest) == (p.TopicKind.MANIFEST, DIGEST)
    parsed = p.parse_topic(p.signature_topic("f", DIGEST))
    assert (parsed.kind, parsed.digest) == (p.TopicKind.SIGNATURE, DIGEST)
    parsed = p.parse_topic(p.chunk_topic("f", DIGEST, 12))
    assert (parsed.kind, parsed.digest, parsed.chunk_index) == (p.TopicKind.CHUNK, DIGEST, 12)
    assert p.device_filter("f", p.DeviceChannel.STATUS) == "edgeops/v1/f/devices/+/status"
    assert p.chunks_filter("f", DIGEST).endswith("/chunks/+")


@pytest.mark.parametrize(
    "topic",
    [
        "other/v1/f/devices/d/status",
        "edgeops/v2/f/devices/d/status",
        "edgeops/v1/f/devices/d/unknown",
        "edgeops/v1/f/devices/d",
        "edgeops/v1/f/devices/d+x/status",
        "edgeops/v1/f/bundles/nothex/manifest",
        f"edgeops/v1/f/bundles/{DIGEST}/chunks/-1",
        f"edgeops/v1/f/bundles/{DIGEST}/chunks/1/2",
        f"edgeops/v1/f/bundles/{DIGEST}",
    ],
)
def test_foreign_topics_raise_topic_error(topic: str) -> None:
    with pytest.raises(TopicError):
        p.parse_topic(topic)


@pytest.mark.parametrize("bad", ["", "a/b", "#", "+", "x" * 65, "-lead"])
def test_builders_refuse_ids_that_would_break_topics(bad: str) -> None:
    with pytest.raises(TopicError):
        p.device_topic("f", bad, p.DeviceChannel.STATUS)


def test_device_id_mismatch_is_detected() -> None:
    parsed = p.parse_topic(p.device_topic("f", "d2", p.DeviceChannel.STATUS))
    assert p.device_id_mismatch(parsed, EXAMPLES[0])
    parsed = p.parse_topic(p.device_topic("f", "d1", p.DeviceChannel.STATUS))
    assert not p.device_id_mismatch(parsed, EXAMPLES[0])
