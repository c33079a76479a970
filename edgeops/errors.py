"""One exception tree for the whole project.

Every error a user or a peer can cause has its own class, so callers catch what they can handle and
telemetry carries a stable ``code`` instead of a message that may change. Subclasses also inherit
the matching built-in where the meaning matches (``ValueError``, ``LookupError``), so generic
callers still work.
"""

from __future__ import annotations


class EdgeOpsError(Exception):
    """Root of every error raised on purpose by EdgeOps."""

    code = "edgeops_error"


class ConfigError(EdgeOpsError, ValueError):
    """A configuration value is missing, malformed or contradictory."""

    code = "config_error"


class NotFoundError(EdgeOpsError, LookupError):
    """A model, version or device named by the user does not exist."""

    code = "not_found"


# --- the MQTT contract -------------------------------------------------------------------------


class ProtocolError(EdgeOpsError, ValueError):
    """An MQTT message broke the contract in edgeops.protocol."""

    code = "protocol_error"


class TopicError(ProtocolError):
    """A topic is not one of the contract's topics, or carries an invalid identifier."""

    code = "bad_topic"


class PayloadDecodeError(ProtocolError):
    """The payload is not UTF-8 JSON with an object at the top, or is too large."""

    code = "bad_payload"


class SchemaVersionError(ProtocolError):
    """The payload's schema version is missing or one this build does not speak."""

    code = "schema_version"


class SchemaValidationError(ProtocolError):
    """A field is missing, unknown, of the wrong type or out of range."""

    code = "schema_invalid"


# --- bundles -----------------------------------------------------------------------------------


class BundleError(EdgeOpsError):
    """A bundle or one of its parts cannot be trusted or read."""

    code = "bundle_error"


class ManifestError(BundleError, ValueError):
    """The manifest is malformed or inconsistent with the bundle."""

    code = "manifest_invalid"


class ChecksumError(BundleError):
    """A chunk, file or manifest does not match the sha256 it was announced with."""

    code = "checksum_mismatch"


class SignatureError(BundleError):
    """A signature is missing or does not verify against a trusted key."""

    code = "signature_invalid"


# --- running models ----------------------------------------------------------------------------


class ModelLoadError(EdgeOpsError):
    """A runtime refused the model, or its smoke vectors gave the wrong outputs."""

    code = "model_load_failed"


class SmokeTestError(ModelLoadError):
    """The bundle's smoke vectors did not reproduce their expected outputs."""

    code = "smoke_test_failed"


class InferenceInputError(EdgeOpsError, ValueError):
    """An inference input has the wrong shape, dtype or feature count."""

    code = "bad_input"


class DriftError(EdgeOpsError, ValueError):
    """Drift inputs or serialised drift state are malformed."""

    code = "drift_error"


class NativeBuildError(EdgeOpsError, ImportError):
    """The compiled core is missing: the package was installed without building native/."""

    code = "native_missing"


class BrokerUnavailableError(EdgeOpsError, ConnectionError):
    """The MQTT broker could not be reached in time."""

    code = "broker_unavailable"


# --- the model pipeline (import, quantization, validation, keys) -------------------------------


class KeyNotTrustedError(SignatureError):
    """A signature names a key that is not in the verifier's trust list."""

    code = "key_not_trusted"


class KeyFileError(EdgeOpsError, ValueError):
    """A signing or public key file is missing, unreadable or not an Ed25519 key."""

    code = "key_file_invalid"


class ModelImportError(ModelLoadError, ValueError):
    """A file offered as a model is not one, is corrupt, or uses an op set this build cannot run."""

    code = "model_import_failed"


class QuantizationError(EdgeOpsError, ValueError):
    """A quantization recipe cannot be applied to this model (the message says why and what to do)."""

    code = "quantization_failed"


class ValidationDataError(EdgeOpsError, ValueError):
    """A calibration or validation set is unreadable or does not fit the model."""

    code = "validation_data_invalid"


class ValidationGateError(EdgeOpsError):
    """The quantized model lost more accuracy than the release gate allows."""

    code = "validation_gate_failed"


# --- the device agent's simulation and local API -----------------------------------------------


class InjectedFault(EdgeOpsError):
    """An inference failed on purpose: a simulated fault (device_agent/simulation.py)."""

    code = "injected_fault"


# --- the fleet server's HTTP API, seen from the CLI ------------------------------------------------


class ServerUnreachableError(EdgeOpsError, ConnectionError):
    """No answer from the fleet server's HTTP API (refused, unknown host, timed out)."""

    code = "server_unreachable"


class AuthenticationError(EdgeOpsError, PermissionError):
    """The server refused the bearer token (missing, unknown or revoked)."""

    code = "invalid_token"


class RemoteRequestError(EdgeOpsError, ValueError):
    """The server understood the call and refused it (a state conflict, an invalid request)."""

    code = "remote_error"

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
