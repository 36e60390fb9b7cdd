"""The resource API's wire constants, in one place for the server and the HTTP adapters.

The reference server (``app.server``) and the clients (``adapters.http_api``,
``adapters.http_key_fragments``) used to hand-copy these; a change to the protocol is now one edit
here, and a mismatch between the two sides cannot creep in.
"""

from __future__ import annotations

from typing import Final

from splitvault.domain.ref import ResourceRef

# Path segments (relative to the API's base URL); ``{folder}`` and ``{version}`` are one quoted
# segment each: ``POST login``, ``POST resources/{folder}`` (upload),
# ``POST devices`` (enrolment), ``POST resources/get/{folder}``, ``GET resources/list/{folder}``,
# ``GET|PUT keys/{version}``.
LOGIN: Final = "login"
DEVICES: Final = "devices"
RESOURCES: Final = "resources"
GET: Final = "get"
LIST: Final = "list"
KEYS: Final = "keys"
# ``POST resources/versions/{folder}`` ({file_name}) lists the kept versions (read grant);
# ``POST resources/rollback/{folder}`` ({file_name, version}) makes a kept one current (write).
VERSIONS: Final = "versions"
ROLLBACK: Final = "rollback"
FIELD_VERSIONS: Final = "versions"
HEALTH_PATH: Final = "/healthz"
READY_PATH: Final = "/readyz"
METRICS_PATH: Final = "/metrics"

# Key fragments are one namespace keyed by version (the original protocol names no folder), so
# their grant is on this pseudo-folder: read to fetch a fragment, write to register one.
FRAGMENTS_GRANT_FOLDER: Final = "keys"

# ``GET keys`` (no version) answers the latest registered fragment and names it in this header;
# every sealed answer (small part, ``cdn.yaml``, fragment) names the version its envelope's ``info``
# binds in it, and the device it is sealed to in ``DEVICE_HEADER``.
LATEST_VERSION_HEADER: Final = "X-Splitvault-Version"
VERSION_HEADER: Final = LATEST_VERSION_HEADER
DEVICE_HEADER: Final = "X-Splitvault-Device"
# ``PUT keys/{version}``: the Ed25519 public key (64 hex digits) that signed the version's archive,
# checked against the key the server records for the account; ``GET keys[/{version}]`` answers
# the key recorded with the fragment (absent when none), and the envelope's ``info`` binds it.
PUBLISHER_KEY_HEADER: Final = "X-Splitvault-Publisher-Key"

# JSON fields.
FIELD_EMAIL: Final = "email"
FIELD_PASSWORD: Final = "password"  # noqa: S105 - a field name, not a password
FIELD_TOKEN: Final = "token"  # noqa: S105 - a field name, not a token
FIELD_FILE_NAME: Final = "file_name"
FIELD_SALT: Final = "salt"  # the account's 16-byte salt, 32 lowercase hex digits
FIELD_PUBLIC_KEY: Final = "public_key"  # a device's X25519 public key, 64 hex digits
FIELD_FINGERPRINT_TAG: Final = "fingerprint_tag"  # domain.device.fingerprint_tag, 64 hex digits
FIELD_DEVICE: Final = "device"  # a device id, 32 hex digits
FIELD_PUBLISHER_KEY: Final = "publisher_key"  # optional at enrolment: Ed25519, 64 hex digits
FIELD_STATUS: Final = "status"
FIELD_FILES: Final = "files"
FIELD_NAME: Final = "name"
FIELD_VERSION: Final = "version"
FIELD_ERROR_CODE: Final = "ErrorCode"
FIELD_MESSAGE: Final = "Message"
UPLOAD_FILE_FIELD: Final = "file"

# Error codes a client may act on (the server sends others too; they are informational).
# 409 at enrolment: the account has its limit of devices (by default one: the original client's
# binding to the first machine, and its error code).
ERROR_HARDWARE_MISMATCH: Final = "HardwareMismatch"
ERROR_DEVICE_PENDING: Final = "DevicePending"  # 409: enrolled, waiting for an operator
ERROR_DEVICE_REVOKED: Final = "DeviceRevoked"  # 403 at enrolment, 401 on a token
ERROR_NOT_ENROLLED: Final = "DeviceNotEnrolled"  # 401: a login token used beyond enrolment
ERROR_FRAGMENT_EXISTS: Final = "FragmentExists"
ERROR_TOO_MANY_ATTEMPTS: Final = "TooManyAttempts"

# Size caps, shared so that what one side accepts the other side can send.
MAX_BODY_BYTES: Final = 1 << 20  # the server refuses larger request bodies with 413
MAX_ENVELOPE_BYTES: Final = 1 << 20  # small parts are a few KB; the server stores at most 1 MiB
MAX_FRAGMENT_BYTES: Final = 64 << 10  # an image key fragment is 32 bytes; 64 KiB leaves room
MAX_SMALL_BODY_BYTES: Final = 64 * 1024  # logins, listings and error answers
MAX_MESSAGE_CHARS: Final = 300
MAX_EMAIL_CHARS: Final = 320
MAX_PASSWORD_CHARS: Final = 1024  # Argon2id hashes any length; a bound keeps requests cheap
MAX_TOKEN_CHARS: Final = 4096

# The CDN config the server hands out like a resource, per role.
CONFIG_FOLDER: Final = "config"
CDN_CONFIG_NAME: Final = "cdn.yaml"
CONFIG_REF: Final = ResourceRef(CONFIG_FOLDER, CDN_CONFIG_NAME)
