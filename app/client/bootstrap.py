"""The composition root: the one place that builds adapters from configuration.

``bootstrap(config, **overrides)`` returns a ``Client`` holding the API adapter, the cache, the
hardware probe and the CDN. Tests and the demo pass keyword-only overrides (a fixed hardware
fingerprint, a fake API) instead of patching. The CDN is built lazily from ``cdn.yaml`` fetched
through the API, with read keys only unless the caller uploads, so a download-only process never
holds write keys; a CDN that refuses the keys it has is rebuilt once from a fresh ``cdn.yaml``
(rotated keys) before the failure is reported. A download asks for the CDN only when the cache
misses (``Client.download`` hands the use case an on-demand reader), and the S3 adapter is
imported only when one is built: a warm download loads neither.

Retries: one ``RetryPolicy`` (the ``retry_policy`` override, else the default) drives both the API
adapter's request retries and ``Client.retrier``, which the use cases use for CDN transfers. The S3
adapter makes one request per call, with the configured connect/read timeouts, so a stalled CDN
fails as ``TimedOut`` within ``read_timeout`` and is retried by our loop alone.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from returns.io import IOFailure, IOResult, IOSuccess
from returns.pipeline import is_successful
from returns.result import Failure
from returns.unsafe import unsafe_perform_io

from splitvault.adapters.config_files import load_device_secret, parse_cdn_yaml
from splitvault.adapters.directory_cdn import DirectoryCdn
from splitvault.adapters.file_cache import FileCache
from splitvault.adapters.http_api import Enrolment, HttpResourceApi, insecure_http_problem
from splitvault.adapters.linux_hardware import LinuxHardware
from splitvault.adapters.system import SystemClock, SystemRandom, sleep
from splitvault.app.client.retrying import Retrier
from splitvault.app.client.usecases import (
    DownloadReport,
    Progress,
    UploadReport,
    download_resource,
    upload_resource,
)
from splitvault.domain import device, signature
from splitvault.domain.config import ClientConfig
from splitvault.domain.errors import AccessDenied, ConfigInvalid, Problem
from splitvault.domain.legacy import parse_shared_key
from splitvault.domain.ports import Cache, Cdn, Clock, Hardware, Random, RangeSink, Span
from splitvault.domain.ref import ResourceRef
from splitvault.domain.retry import RetryPolicy
from splitvault.domain.signature import PublisherKey

log = logging.getLogger("splitvault.bootstrap")
T = TypeVar("T")

# The fingerprint HMAC key: it makes the value meaningless outside splitvault, so a fingerprint
# leaked from another product cannot be replayed here (and ours cannot be matched there).
HARDWARE_APP_KEY = b"splitvault/v1/hardware-fingerprint"
CDN_CONFIG_REF = ResourceRef("config", "cdn.yaml")


class DeviceIdentity:
    """This machine's device key for one account, from the salt ``/login`` answers.

    Argon2id (the password key) runs once per salt, so once per process; the fingerprint comes
    from the ``Hardware`` adapter and the optional device secret from ``device_secret_file``.
    The keys live only in this object's memory and never in a repr.
    """

    def __init__(self, password: str, hardware: Hardware, secret: bytes | None) -> None:
        self._password = password
        self._hardware = hardware
        self._secret = secret
        self._lock = threading.Lock()
        self._derived: tuple[bytes, Enrolment] | None = None
        self._publisher: PublisherKey | None = None

    def __repr__(self) -> str:
        return f"DeviceIdentity(device_secret={'yes' if self._secret else 'no'})"

    def __call__(self, salt: bytes) -> Enrolment:
        with self._lock:
            if self._derived is not None and self._derived[0] == salt:
                return self._derived[1]
            password_key = device.password_key(self._password, salt)
            fingerprint = self._hardware.fingerprint().value
            key = device.derive_device_key(password_key, fingerprint, self._secret)
            enrolment = (key, device.fingerprint_tag(password_key, fingerprint))
            self._derived = (salt, enrolment)
            self._publisher = PublisherKey.from_seed(device.publisher_seed(password_key))
            return enrolment

    def publisher_key(self) -> PublisherKey | None:
        """The account's default publisher signing key, once a login has given the salt."""
        with self._lock:
            return self._publisher


class Client:
    """Everything a use case needs for one user on one machine.

    Build it with ``bootstrap``. Thread-safe: the API adapter, cache and CDN may be shared.
    ``retrier`` is what the use cases should pass as their ``retrier`` (CDN transfers).
    """

    def __init__(
        self,
        *,
        config: ClientConfig,
        api: HttpResourceApi,
        cache: Cache,
        hardware: Hardware,
        random: Random,
        clock: Clock,
        cdn: Cdn | None,
        publisher_key: bytes | None,
        retrier: Retrier,
        signing_key: PublisherKey | None = None,
        identity: DeviceIdentity | None = None,
    ) -> None:
        self.config = config
        self.api = api
        self.cache = cache
        self.hardware = hardware
        self.random = random
        self.clock = clock
        self.publisher_key = publisher_key
        self.signing_key = signing_key
        self._identity = identity
        self.retrier = retrier
        self._fixed_cdn = cdn
        self._cdns: dict[bool, Cdn] = {}
        self._lock = threading.Lock()
        # One build of each CDN client at a time (single flight: a prefetch and the download
        # that needs it, or 16 threads of one service, fetch cdn.yaml once).
        self._building = {False: threading.Lock(), True: threading.Lock()}
        self._fingerprint: str | None = None

    def __repr__(self) -> str:
        return f"Client(api={self.api!r}, cache={self.cache!r})"

    @property
    def fingerprint(self) -> str:
        """This machine's fingerprint value (probed once)."""
        if self._fingerprint is None:
            self._fingerprint = self.hardware.fingerprint().value
        return self._fingerprint

    def cdn(self, *, write: bool) -> IOResult[Cdn, Problem]:
        """The CDN, with write keys only when ``write`` is asked for."""
        if self._fixed_cdn is not None:
            return IOSuccess(self._fixed_cdn)
        if self.config.cdn_mode == "directory":
            if self.config.cdn_dir is None:
                return IOFailure(ConfigInvalid("cdn_dir", "cdn_mode is directory but no cdn_dir"))
            return IOSuccess(DirectoryCdn(self.config.cdn_dir))
        with self._building[write]:
            with self._lock:
                cached = self._cdns.get(write)
                if cached is not None:
                    return IOSuccess(cached)
            built = self._fetch_cdn(write=write)
            if is_successful(built):
                with self._lock:
                    self._cdns[write] = unsafe_perform_io(built.unwrap())
            return built

    def _prefetch_cdn(self, ref: ResourceRef) -> threading.Thread | None:
        """Build the read-only CDN client in the background when ``ref``'s download will miss
        the cache: ``cdn.yaml``, the S3 adapter's import and its first connection then overlap
        the small part's round trip instead of following it. A download that may hit the cache
        never starts it, so the warm path never loads the S3 adapter.
        The download joins the thread before it returns: none outlives the call (a facade
        closed right after a failed download would otherwise pull the API client away from it).
        """
        if self._fixed_cdn is not None or self.config.cdn_mode == "directory":
            return None
        with self._lock:
            if False in self._cdns or self._building[False].locked():
                return None
        if self.cache.holds(ref):
            return None

        def build() -> None:
            built = self.cdn(write=False)
            if not is_successful(built):  # the download's own call reports it
                log.debug("prefetching the CDN client failed; the download will retry it")

        thread = threading.Thread(target=build, name="splitvault-cdn-prefetch", daemon=True)
        thread.start()
        return thread

    def forget_cdn(self) -> None:
        """Drop the CDN clients so the next use fetches ``cdn.yaml`` again (rotated keys)."""
        with self._lock:
            self._cdns.clear()

    def with_cdn(
        self, write: bool, action: Callable[[Cdn], IOResult[T, Problem]]
    ) -> IOResult[T, Problem]:
        """Run ``action`` on the CDN; on ``AccessDenied`` refresh ``cdn.yaml`` once and retry."""
        first = self.cdn(write=write).bind(action)
        if is_successful(first) or not isinstance(unsafe_perform_io(first.failure()), AccessDenied):
            return first
        log.info("the CDN refused our keys; fetching cdn.yaml again")
        self.forget_cdn()
        return self.cdn(write=write).bind(action)

    def upload_signing_key(self) -> IOResult[PublisherKey | None, Problem]:
        """The key uploads are signed with: the key file's when configured, else the account's
        default key (``device.publisher_seed``), derived at login; so this logs in first when
        the session has not yet (an upload's commit needs the login anyway). ``None`` only for a
        client without a login of its own (an injected API adapter)."""
        identity = self._identity
        if self.signing_key is not None or identity is None:
            return IOSuccess(self.signing_key)
        return self.api.session_token().map(lambda _: identity.publisher_key())

    def upload(
        self,
        ref: ResourceRef,
        source: Path,
        *,
        progress: Progress | None = None,
        publisher_key: bytes | None = None,
    ) -> IOResult[UploadReport, Problem]:
        """``upload_resource`` with this client's API, write-capable CDN, cache and keys;
        ``publisher_key`` (a call's own key wrapping the data key) replaces the configured one."""

        def run(cdn: Cdn, signing_key: PublisherKey | None) -> IOResult[UploadReport, Problem]:
            return upload_resource(
                ref,
                source,
                api=self.api,
                cdn=cdn,
                cache=self.cache,
                random=self.random,
                publisher_key=publisher_key or self.publisher_key,
                signing_key=signing_key,
                workers=self.config.workers,
                progress=progress,
                retrier=self.retrier,
            )

        return self.upload_signing_key().bind(
            lambda signing_key: self.with_cdn(True, lambda cdn: run(cdn, signing_key))
        )

    def download(
        self, ref: ResourceRef, out: Path, *, progress: Progress | None = None
    ) -> IOResult[DownloadReport, Problem]:
        """``download_resource`` with this client's API, read-only CDN, cache and keys."""
        prefetch = self._prefetch_cdn(ref)
        try:
            return self._download(ref, out, progress)
        finally:
            if prefetch is not None:
                prefetch.join()

    def _download(
        self, ref: ResourceRef, out: Path, progress: Progress | None
    ) -> IOResult[DownloadReport, Problem]:
        return download_resource(
            ref,
            out,
            api=self.api,
            cdn=_CdnOnDemand(self),
            cache=self.cache,
            publisher_key=self.publisher_key,
            pinned=self.config.publisher_keys,
            workers=self.config.workers,
            progress=progress,
            retrier=self.retrier,
        )

    def _fetch_cdn(self, *, write: bool) -> IOResult[Cdn, Problem]:
        def build(text: bytes) -> IOResult[Cdn, Problem]:
            try:
                decoded = text.decode("utf-8")
            except UnicodeDecodeError:
                return IOFailure(ConfigInvalid("cdn.yaml", "is not UTF-8 text"))
            parsed = parse_cdn_yaml(decoded)
            if isinstance(parsed, Failure):
                return IOFailure(parsed.failure())
            config = parsed.unwrap()
            if write and config.write_keys is None:
                # The server hands write keys only to uploaders: this account may not upload.
                return IOFailure(
                    AccessDenied(
                        "the CDN", "this account's role has read keys only (uploader needed)"
                    )
                )
            # Only a process that really talks S3 loads the S3 adapter (and its XML and TLS).
            from splitvault.adapters.s3_cdn import S3Cdn, S3Tuning  # noqa: PLC0415

            # The adapter makes one request per call: retries are Client.retrier's alone.
            tuning = S3Tuning(
                connect_timeout=self.config.connect_timeout,
                read_timeout=self.config.read_timeout,
                part_checksums=_part_checksums_wanted(os.environ),
            )
            made = S3Cdn.from_config(config, write=write, tuning=tuning)
            if isinstance(made, Failure):
                return IOFailure(made.failure())
            return IOSuccess(made.unwrap())

        text: IOResult[bytes, Problem] = self.api.download_cdn_config()
        return text.bind(build)

    def close(self) -> None:
        """Release connection pools."""
        self.api.close()


def _part_checksums_wanted(environ: Mapping[str, str]) -> bool:
    """Upload parts carry CRC32s unless boto3's own switch says ``when_required`` (for a store
    that refuses checksum headers): one setting serves both clients on a machine."""
    setting = environ.get("AWS_REQUEST_CHECKSUM_CALCULATION", "when_supported")
    return setting.strip().lower() != "when_required"


class _CdnOnDemand:
    """The read-only CDN, fetched (``cdn.yaml``) and built on the first big-part download.

    A download whose big part the cache holds never calls it, so it never fetches ``cdn.yaml``
    nor imports the S3 adapter. ``AccessDenied`` refreshes the keys once, as ``Client.with_cdn``
    does.
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    def __repr__(self) -> str:
        return "_CdnOnDemand(read-only)"

    def download_ranges(
        self, ref: ResourceRef, ranges: Sequence[Span], sink: RangeSink
    ) -> IOResult[int, Problem]:
        return self._client.with_cdn(False, lambda cdn: cdn.download_ranges(ref, ranges, sink))


def read_publisher_key(path: Path | None) -> IOResult[bytes | None, Problem]:
    """The publisher key from its file, if one is configured."""
    if path is None:
        return IOSuccess(None)
    try:
        data = path.read_bytes()
    except OSError as error:
        return IOFailure(
            ConfigInvalid("publisher_key_file", f"cannot read {path}: {error.strerror}")
        )
    parsed = parse_shared_key(data, "publisher_key_file")
    if isinstance(parsed, Failure):
        return IOFailure(parsed.failure())
    return IOSuccess(parsed.unwrap())


def read_signing_key(path: Path | None) -> IOResult[PublisherKey | None, Problem]:
    """This publisher's Ed25519 key from its seed file (32 raw bytes or 64 hex digits)."""
    field = "publisher_signing_key_file"
    if path is None:
        return IOSuccess(None)
    try:
        data = path.read_bytes()
    except OSError as error:
        return IOFailure(ConfigInvalid(field, f"cannot read {path}: {error.strerror}"))
    seed = data
    if len(data) != signature.SEED_BYTES:
        try:
            seed = bytes.fromhex(data.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            seed = b""
    if len(seed) != signature.SEED_BYTES:
        return IOFailure(
            ConfigInvalid(
                field, f"{path} must hold a 32-byte Ed25519 seed, raw or as 64 hex digits"
            )
        )
    return IOSuccess(PublisherKey.from_seed(seed))


def bootstrap(
    config: ClientConfig,
    *,
    api: HttpResourceApi | None = None,
    cdn: Cdn | None = None,
    cache: Cache | None = None,
    hardware: Hardware | None = None,
    clock: Clock | None = None,
    random: Random | None = None,
    sleeper: Callable[[float], None] | None = None,
    retry_policy: RetryPolicy | None = None,
    identity: DeviceIdentity | None = None,
) -> IOResult[Client, Problem]:
    """Build a ``Client`` from configuration; overrides replace single adapters.

    ``retry_policy`` governs the API adapter built here (a passed ``api`` keeps its own) and the
    client's ``retrier`` for CDN transfers; ``identity`` is a passed ``api``'s device identity,
    whose default publisher key then signs uploads without a key file (the API built here
    brings its own).
    """
    the_clock = clock or SystemClock()
    the_random = random or SystemRandom()
    the_sleep = sleeper or sleep
    policy = retry_policy or RetryPolicy()
    the_hardware = hardware or LinuxHardware(HARDWARE_APP_KEY)
    if api is None:
        if not config.api_url or not config.email or config.password is None:
            missing = next(
                name
                for name, value in (
                    ("api_url", config.api_url),
                    ("email", config.email),
                    ("password", config.password),
                )
                if not value
            )
            return IOFailure(
                ConfigInvalid(missing, "is required: pass a flag, SPLITVAULT_* or the config file")
            )
        insecure = insecure_http_problem(config.api_url, config.allow_insecure_http)
        if insecure is not None:
            return IOFailure(insecure)
        secret = load_device_secret(config.device_secret_file, the_random)
        if not is_successful(secret):
            return IOFailure(unsafe_perform_io(secret.failure()))
        identity = DeviceIdentity(config.password, the_hardware, unsafe_perform_io(secret.unwrap()))
        api = HttpResourceApi(
            config.api_url,
            config.email,
            config.password,
            device=identity,
            allow_insecure_http=config.allow_insecure_http,
            ca_bundle=config.ca_bundle,
            timeout=config.read_timeout,
            connect_timeout=config.connect_timeout,
            policy=policy,
            clock=the_clock,
            random=the_random,
            sleep=the_sleep,
        )
    built_api = api
    cache_result: IOResult[Cache, Problem] = (
        IOSuccess(cache)
        if cache is not None
        else FileCache.open(config.cache_dir, max_bytes=config.cache_max_bytes)
    )

    def make(
        the_cache: Cache, publisher_key: bytes | None, signing_key: PublisherKey | None
    ) -> Client:
        # Enrolment declares a configured key file's key, so the server records it for the
        # account. The default (derived) key is not declared: on an account recorded with a key
        # file's key, every machine without that file would then be refused even to download;
        # it is recorded at its first signed upload instead.
        built_api.declare_publisher_key(None if signing_key is None else signing_key.public)
        return Client(
            config=config,
            api=built_api,
            cache=the_cache,
            hardware=the_hardware,
            random=the_random,
            clock=the_clock,
            cdn=cdn,
            publisher_key=publisher_key,
            retrier=Retrier(policy, the_clock, the_random, the_sleep),
            signing_key=signing_key,
            identity=identity,
        )

    return cache_result.bind(
        lambda the_cache: read_publisher_key(config.publisher_key_file).bind(
            lambda key: read_signing_key(config.publisher_signing_key_file).map(
                lambda signing: make(the_cache, key, signing)
            )
        )
    )
