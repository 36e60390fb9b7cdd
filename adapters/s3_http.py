"""A small S3 REST client: SigV4-signed requests over pooled ``http.client`` connections.

``S3Cdn`` needs nine S3 calls (head, ranged get, put, the four multipart calls, two listings and a
delete) with one fixed pair of keys from ``cdn.yaml``: no credential chain, no service model, no
retries (the core's retry loop is the only one). botocore did this for 0.2-0.3 CPU-s of import and
client construction per process (its S3 model and endpoint rules are parsed at start-up) and
several copies of every body: ranged bodies were read in 1 MiB ``bytes`` through urllib3. Here a
range is read with ``readinto`` straight into a reused buffer (``recv_into``: the socket's copy and
nothing else) and a part is sent with one ``sendall`` of the caller's buffer.

Signing is AWS Signature Version 4 (``sign``): the payload is ``UNSIGNED-PAYLOAD`` for object
bodies (authenticated ciphertext under a publisher-signed digest, so the SHA-256 would protect
nothing and cost 0.6 CPU-s per GiB) and SHA-256-signed for the small XML bodies. ``tests/adapters/
test_s3_http.py`` checks it against AWS's published example and against botocore's own signer, and
moto verifies the signatures of every request in the IAM-enforcing tests.

TLS verifies against ``AWS_CA_BUNDLE`` when set, else certifi's bundle (as botocore and httpx do).
``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` are honoured as botocore did: an ``https`` endpoint is
tunnelled (``CONNECT``), an ``http`` one is sent to the proxy in absolute form.

Failures are raised as ``S3Failure`` subclasses, each saying what it was; ``S3Cdn`` maps them onto
the port's typed failures. Nothing here logs a key, a signature or a request's headers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import os
import select
import socket
import ssl
import threading
import urllib.parse
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Literal
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import attrs

from splitvault.domain.config import S3Keys

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
ALGORITHM = "AWS4-HMAC-SHA256"
MAX_XML_BYTES = 16 * 1024 * 1024  # a 1,000-key listing is about 300 KB
MAX_ERROR_BYTES = 64 * 1024
_NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
_USER_AGENT = "splitvault"
# Headers a proxy or the HTTP stack may add or change on the way: never part of the signature.
_UNSIGNED_HEADERS = frozenset({"user-agent", "expect", "connection", "content-length"})

Query = Sequence[tuple[str, str]]
Body = bytes | bytearray | memoryview


class S3Failure(Exception):
    """A request that did not get a successful answer."""


class S3Error(S3Failure):
    """The endpoint answered with an error status (``code`` from the XML body when it sent one)."""

    def __init__(self, status: int, code: str, message: str, retry_after: str | None) -> None:
        super().__init__(f"{code or 'error'} (HTTP {status}): {message}" if message else code)
        self.status = status
        self.code = code
        self.retry_after = retry_after


class S3ConnectTimeout(S3Failure):
    """No connection within the connect timeout."""


class S3ReadTimeout(S3Failure):
    """The endpoint stopped sending (or accepting) bytes for longer than the read timeout."""


class S3ConnectionFailed(S3Failure):
    """The connection was refused, reset or closed before the answer was complete."""


class S3TlsFailed(S3Failure):
    """The TLS handshake or the certificate check failed: retrying does not fix that."""


class S3BadAnswer(S3Failure):
    """A successful status with a body that is not what the call answers (not XML, too long)."""


# --- Signature Version 4 -----------------------------------------------------------------------


def uri_encode(text: str, *, keep_slash: bool) -> str:
    """SigV4's URI encoding: every byte but ``A-Za-z0-9-_.~`` as ``%XX`` (``/`` kept in paths)."""
    return urllib.parse.quote(text, safe="/" if keep_slash else "")


def canonical_query(query: Query) -> str:
    """The query string, each name and value encoded, sorted (the signed and the sent form)."""
    pairs = sorted(
        (uri_encode(name, keep_slash=False), uri_encode(value, keep_slash=False))
        for name, value in query
    )
    return "&".join(f"{name}={value}" for name, value in pairs)


def _signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    key = hmac.digest(f"AWS4{secret}".encode(), day.encode(), "sha256")
    for part in (region, service, "aws4_request"):
        key = hmac.digest(key, part.encode(), "sha256")
    return key


def sign(
    *,
    method: str,
    path: str,
    query: Query,
    headers: Mapping[str, str],
    payload_hash: str,
    keys: S3Keys,
    region: str,
    when: datetime,
    service: str = "s3",
) -> dict[str, str]:
    """The headers that sign one request: ``x-amz-date``, ``x-amz-content-sha256`` and
    ``Authorization``.

    ``path`` is the URI-encoded path as sent; ``headers`` must hold ``host`` and every other header
    to be signed (all but the ones proxies may change). Pure: the same inputs sign alike.
    """
    stamp = when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    day = stamp[:8]
    signed_headers = {
        name.lower(): " ".join(value.split())
        for name, value in headers.items()
        if name.lower() not in _UNSIGNED_HEADERS
    }
    signed_headers["x-amz-date"] = stamp
    signed_headers["x-amz-content-sha256"] = payload_hash
    names = sorted(signed_headers)
    canonical = "\n".join(
        (
            method,
            path,
            canonical_query(query),
            "".join(f"{name}:{signed_headers[name]}\n" for name in names),
            ";".join(names),
            payload_hash,
        )
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join((ALGORITHM, stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()))
    key = _signing_key(keys.secret_access_key, day, region, service)
    signature = hmac.new(key, to_sign.encode(), "sha256").hexdigest()
    return {
        "x-amz-date": stamp,
        "x-amz-content-sha256": payload_hash,
        "Authorization": (
            f"{ALGORITHM} Credential={keys.access_key_id}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        ),
    }


# --- Connections --------------------------------------------------------------------------------


@attrs.frozen
class _Route:
    """Where a request's connection goes: the origin, or a proxy in front of it."""

    host: str
    port: int
    tls: bool
    tunnel: tuple[str, int] | None = None  # CONNECT through an https proxy... to this origin
    absolute: bool = False  # an http proxy: the request target is the full URL
    proxy_auth: str | None = attrs.field(default=None, repr=False)


def crc32_of(data: Body) -> str:
    """S3's ``x-amz-checksum-crc32`` value: the CRC-32 of ``data``, big-endian, base64."""
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def _proxy_route(scheme: str, host: str, port: int) -> _Route:
    direct = _Route(host, port, scheme == "https")
    if not any(name.lower() in {"http_proxy", "https_proxy"} for name in os.environ):
        return direct  # the common case, without urllib.request's import (a few ms)
    import urllib.request  # noqa: PLC0415

    proxy = urllib.request.getproxies_environment().get(scheme)
    if not proxy or urllib.request.proxy_bypass(host):
        return direct
    parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    auth = None
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        word = urllib.parse.unquote(parts.password or "")
        auth = "Basic " + base64.b64encode(f"{user}:{word}".encode()).decode()
    proxy_port = parts.port or (443 if parts.scheme == "https" else 80)
    proxy_host = parts.hostname or ""
    if scheme == "https":
        return _Route(proxy_host, proxy_port, True, tunnel=(host, port), proxy_auth=auth)
    return _Route(proxy_host, proxy_port, False, absolute=True, proxy_auth=auth)


def _tls_context() -> ssl.SSLContext:
    bundle = os.environ.get("AWS_CA_BUNDLE")
    if not bundle:
        import certifi  # noqa: PLC0415 - httpx's dependency, so always installed

        bundle = certifi.where()
    return ssl.create_default_context(cafile=bundle)


def _dropped(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle pooled connection was closed by the peer (readable while idle: EOF)."""
    sock = connection.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class _Pool:
    """Idle keep-alive connections to one route, at most ``size`` of them, LIFO."""

    def __init__(self, route: _Route, *, size: int, connect_timeout: float, read_timeout: float):
        self.route = route
        self._size = size
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._tls = _tls_context() if route.tls or route.tunnel else None

    def take(self) -> http.client.HTTPConnection:
        with self._lock:
            while self._idle:
                connection = self._idle.pop()
                if not _dropped(connection):
                    return connection
                connection.close()
        return self._connect()

    def give(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._size:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _connect(self) -> http.client.HTTPConnection:
        route = self.route
        connection: http.client.HTTPConnection
        if route.tls:
            connection = http.client.HTTPSConnection(
                route.host, route.port, timeout=self._connect_timeout, context=self._tls
            )
        else:
            connection = http.client.HTTPConnection(
                route.host, route.port, timeout=self._connect_timeout
            )
        if route.tunnel is not None:
            extra = {"Proxy-Authorization": route.proxy_auth} if route.proxy_auth else None
            connection.set_tunnel(route.tunnel[0], route.tunnel[1], headers=extra)
        try:
            connection.connect()
        except ssl.SSLError as error:
            connection.close()
            raise S3TlsFailed(f"TLS with {route.host} failed: {error.reason or error}") from error
        except TimeoutError as error:
            connection.close()
            raise S3ConnectTimeout(f"no connection to {route.host}:{route.port}") from error
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            reason = error.strerror if isinstance(error, OSError) else None
            raise S3ConnectionFailed(
                f"cannot connect to {route.host}:{route.port}: {reason or type(error).__name__}"
            ) from error
        sock = connection.sock
        assert sock is not None  # connect() succeeded
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self._read_timeout)
        return connection


# --- Requests -----------------------------------------------------------------------------------


def _failure_of(error: BaseException) -> S3Failure:
    """An ``S3Failure`` for what went wrong on an established connection."""
    if isinstance(error, S3Failure):
        return error
    if isinstance(error, ssl.SSLError):
        return S3TlsFailed(f"TLS failed mid-request: {error.reason or error}")
    if isinstance(error, TimeoutError):
        return S3ReadTimeout("the endpoint stopped answering")
    if isinstance(error, http.client.IncompleteRead):
        return S3ConnectionFailed("the connection closed before the answer's end")
    if isinstance(error, OSError | http.client.HTTPException):
        reason = error.strerror if isinstance(error, OSError) else None
        return S3ConnectionFailed(reason or type(error).__name__)
    raise error


class Answer:
    """One response: its status and headers, and its body read whole or streamed.

    A streamed answer must be ``close``d; a connection goes back to the pool only when its answer
    was read to the end, else it is closed (an unread body would corrupt the next request).
    """

    def __init__(
        self,
        pool: _Pool,
        connection: http.client.HTTPConnection,
        response: http.client.HTTPResponse,
    ) -> None:
        self._pool = pool
        self._connection: http.client.HTTPConnection | None = connection
        self._response = response
        self.status = response.status

    def header(self, name: str) -> str | None:
        """A response header's value, or None."""
        return self._response.getheader(name)

    def readinto(self, view: memoryview) -> int:
        """Fill ``view`` from the body (fewer bytes only at its end); raises ``S3Failure``."""
        done = 0
        try:
            while done < len(view):
                got = self._response.readinto(view[done:])
                if not got:
                    break
                done += got
        except BaseException as error:
            self._discard()
            raise _failure_of(error) from error
        return done

    def read(self, cap: int) -> bytes:
        """The whole body, at most ``cap`` bytes (``S3BadAnswer`` beyond)."""
        try:
            data = self._response.read(cap + 1)
        except BaseException as error:
            self._discard()
            raise _failure_of(error) from error
        if len(data) > cap:
            self._discard()
            raise S3BadAnswer(f"an answer longer than {cap} bytes")
        self.close()
        return data

    def close(self) -> None:
        """Release the connection: back to the pool if the body was read to its end."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._response.isclosed() and not self._response.will_close:
            self._pool.give(connection)
        else:
            self._response.close()
            connection.close()

    def _discard(self) -> None:
        connection, self._connection = self._connection, None
        self._response.close()
        if connection is not None:
            connection.close()


@attrs.frozen
class Upload:
    """An unfinished multipart upload, as ``list_multipart_uploads`` reports it."""

    key: str
    upload_id: str
    initiated: datetime


class S3Http:
    """Signed requests to one S3-compatible endpoint with one pair of keys.

    Args:
        endpoint_url: ``http(s)://host[:port][/prefix]``.
        region: the signing region.
        keys: the only credentials this client holds (never in a repr).
        pool_size: idle connections kept for reuse (one per part or range in flight).
        connect_timeout, read_timeout: seconds before a connect, or a stalled read or write, fails.
        addressing_style: ``path`` (``host/bucket/key``: every store, IP endpoints) or
            ``virtual`` (``bucket.host/key``); ``auto`` is virtual for DNS-safe buckets on a named
            host, path otherwise.
    """

    def __init__(
        self,
        endpoint_url: str,
        region: str,
        keys: S3Keys,
        *,
        pool_size: int = 10,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        addressing_style: Literal["path", "virtual", "auto"] = "path",
    ) -> None:
        parts = urllib.parse.urlsplit(endpoint_url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"an S3 endpoint is an http(s) URL, not {endpoint_url!r}")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        self._region = region
        self._keys = keys
        self._style = addressing_style
        self._pool_size = pool_size
        self._timeouts = (connect_timeout, read_timeout)
        self._pools: dict[str, _Pool] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Http({self._scheme}://{self._host}:{self._port}, {self._style} addressing)"

    def close(self) -> None:
        """Close every idle connection; later requests open new ones."""
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()

    # -- the calls ------------------------------------------------------------------------------

    def head_object(self, bucket: str, key: str) -> tuple[int, str]:
        """The object's length and ETag (``*`` if the store sends none)."""
        answer = self.send("HEAD", bucket, key)
        answer.read(0)
        length = answer.header("Content-Length")
        if length is None or not length.isdigit():
            raise S3BadAnswer("a HEAD answer without a Content-Length")
        return int(length), answer.header("ETag") or "*"

    def get_range(self, bucket: str, key: str, low: int, high: int, *, if_match: str) -> Answer:
        """A streamed answer holding exactly bytes ``[low, high)`` of the object.

        Raises ``S3BadAnswer`` when the store answers another length (a store that ignores
        ``Range`` would otherwise put the object's first bytes at ``low``).
        """
        answer = self.send(
            "GET", bucket, key, headers={"Range": f"bytes={low}-{high - 1}", "If-Match": if_match}
        )
        length = answer.header("Content-Length")
        # 200 is right only for a range that is the whole object (some stores answer so).
        if (answer.status != 206 and low != 0) or length != str(high - low):
            answer.close()
            raise S3BadAnswer(
                f"asked for bytes {low}-{high - 1}, answered HTTP {answer.status} "
                f"with {length or 'no'} Content-Length"
            )
        return answer

    def put_object(self, bucket: str, key: str, body: Body) -> None:
        """Store ``body`` as the object (one request)."""
        self.send("PUT", bucket, key, body=body).read(MAX_ERROR_BYTES)

    def delete_object(self, bucket: str, key: str) -> None:
        """Delete the object (S3 answers success for a key that is not there)."""
        self.send("DELETE", bucket, key).read(MAX_ERROR_BYTES)

    def create_multipart_upload(self, bucket: str, key: str, *, crc32: bool = False) -> str:
        """Begin a multipart upload; its upload id. With ``crc32`` every part must then carry
        its CRC32 (``upload_part(crc32=...)``) and the store checks each part's bytes."""
        headers = {"x-amz-checksum-algorithm": "CRC32"} if crc32 else None
        root = self._xml(self.send("POST", bucket, key, query=[("uploads", "")], headers=headers))
        upload_id = _text(root, "UploadId")
        if not upload_id:
            raise S3BadAnswer("CreateMultipartUpload answered no UploadId")
        return upload_id

    def upload_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        body: Body,
        *,
        crc32: str | None = None,
    ) -> str:
        """Send part ``number`` (from 1) as one request; its ETag. ``crc32`` is the part's
        ``crc32_of`` value, for an upload begun with ``crc32=True``."""
        query = [("partNumber", str(number)), ("uploadId", upload_id)]
        headers = {"x-amz-checksum-crc32": crc32} if crc32 is not None else None
        answer = self.send("PUT", bucket, key, query=query, headers=headers, body=body)
        answer.read(MAX_ERROR_BYTES)
        etag = answer.header("ETag")
        if not etag:
            raise S3BadAnswer(f"UploadPart {number} answered no ETag")
        return etag

    def complete_multipart_upload(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        sent: Sequence[tuple[str, str | None]],
    ) -> None:
        """Join the parts: (ETag, CRC32 or None) of each, in part order."""
        parts = "".join(
            f"<Part><ETag>{escape(etag)}</ETag>"
            + (f"<ChecksumCRC32>{escape(crc)}</ChecksumCRC32>" if crc is not None else "")
            + f"<PartNumber>{number}</PartNumber></Part>"
            for number, (etag, crc) in enumerate(sent, start=1)
        )
        body = f'<CompleteMultipartUpload xmlns="{_NAMESPACE}">{parts}</CompleteMultipartUpload>'
        answer = self.send(
            "POST", bucket, key, query=[("uploadId", upload_id)], body=body.encode(), sign_body=True
        )
        # S3 may answer 200 and then an <Error> body when the join fails late.
        self._xml(answer)

    def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        """Abort an unfinished upload; its parts are deleted."""
        self.send("DELETE", bucket, key, query=[("uploadId", upload_id)]).read(MAX_ERROR_BYTES)

    def list_objects(self, bucket: str, prefix: str = "") -> Iterator[tuple[str, datetime]]:
        """Every object's key and last-modified time, page by page (ListObjectsV2)."""

        def after(root: ElementTree.Element) -> Query:
            token = _text(root, "NextContinuationToken")
            return [("continuation-token", token)] if token else []

        for root, key_of in self._pages(bucket, [("list-type", "2")], prefix, after):
            for item in _children(root, "Contents"):
                yield key_of(item), _timestamp(_text(item, "LastModified") or "")

    def list_multipart_uploads(self, bucket: str, prefix: str = "") -> Iterator[Upload]:
        """Every unfinished multipart upload under ``prefix``, page by page."""

        def after(root: ElementTree.Element) -> Query:
            markers = [("key-marker", "NextKeyMarker"), ("upload-id-marker", "NextUploadIdMarker")]
            return [(name, value) for name, tag in markers if (value := _text(root, tag))]

        for root, key_of in self._pages(bucket, [("uploads", "")], prefix, after):
            for item in _children(root, "Upload"):
                yield Upload(
                    key_of(item),
                    _text(item, "UploadId") or "",
                    _timestamp(_text(item, "Initiated") or ""),
                )

    def _pages(
        self,
        bucket: str,
        query: Query,
        prefix: str,
        after: Callable[[ElementTree.Element], Query],
    ) -> Iterator[tuple[ElementTree.Element, Callable[[ElementTree.Element], str]]]:
        """A listing's pages: each page's root and how to read an item's ``Key``.

        Keys come ``encoding-type=url`` (XML cannot carry every key) and are decoded when the store
        says it encoded them; ``after(root)`` names the markers of the next page (none: the end).
        """
        markers: Query = []
        while True:
            page = [*query, ("encoding-type", "url"), *([("prefix", prefix)] if prefix else [])]
            root = self._xml(self.send("GET", bucket, "", query=[*page, *markers]))
            decode = _text(root, "EncodingType") == "url"

            def key_of(item: ElementTree.Element, decode: bool = decode) -> str:
                key = _text(item, "Key") or ""
                return urllib.parse.unquote(key) if decode else key

            yield root, key_of
            markers = after(root)
            if _text(root, "IsTruncated") != "true" or not markers:
                return

    # -- the wire -------------------------------------------------------------------------------

    def send(
        self,
        method: str,
        bucket: str,
        key: str,
        *,
        query: Query = (),
        headers: Mapping[str, str] | None = None,
        body: Body | None = None,
        sign_body: bool = False,
    ) -> Answer:
        """One signed request; its answer when the status is 2xx, else ``S3Error``."""
        name, host, path = self._locate(bucket, key)
        sent = {"Host": host, **(headers or {})}
        if body is None:
            payload_hash = EMPTY_SHA256
        elif sign_body:
            payload_hash = hashlib.sha256(body).hexdigest()
        else:
            payload_hash = UNSIGNED_PAYLOAD
        sent.update(
            sign(
                method=method,
                path=path,
                query=query,
                headers=sent,
                payload_hash=payload_hash,
                keys=self._keys,
                region=self._region,
                when=datetime.now(UTC),
            )
        )
        sent["User-Agent"] = _USER_AGENT
        target = path + (f"?{canonical_query(query)}" if query else "")
        pool = self._pool(name)
        connection = pool.take()
        if pool.route.absolute:
            target = f"{self._scheme}://{host}{target}"
            if pool.route.proxy_auth:
                sent["Proxy-Authorization"] = pool.route.proxy_auth
        try:
            try:
                connection.request(method, target, body=body, headers=sent)
            except (BrokenPipeError, ConnectionResetError) as broken:
                # A store may answer (403, 400) and close before taking the whole body: its
                # answer, not the broken pipe, says what went wrong (a final error, not a
                # transient one). No answer there: the pipe's error stands.
                if body is None:
                    raise
                response = _answer_after_broken_send(connection, broken)
            else:
                response = connection.getresponse()
        except BaseException as error:
            connection.close()
            raise _failure_of(error) from error
        answer = Answer(pool, connection, response)
        if 200 <= answer.status < 300:
            return answer
        raise _error_of(answer)

    def _locate(self, bucket: str, key: str) -> tuple[str, str, str]:
        """The host name, the Host header and the encoded path of an object (of a bucket when
        ``key`` is empty)."""
        if self._virtual(bucket):
            name = f"{bucket}.{self._host}"
            path = f"{self._prefix}/{uri_encode(key, keep_slash=True)}"
        else:
            name = self._host
            path = f"{self._prefix}/{uri_encode(bucket, keep_slash=False)}"
            if key:
                path += "/" + uri_encode(key, keep_slash=True)
        shown = f"[{name}]" if ":" in name else name  # an IPv6 literal
        if self._port != (443 if self._scheme == "https" else 80):
            shown += f":{self._port}"
        return name, shown, path

    def _virtual(self, bucket: str) -> bool:
        if self._style != "auto":
            return self._style == "virtual"
        dns_safe = bucket.replace("-", "").isalnum() and bucket.islower() and "." not in bucket
        named_host = not self._host.replace(".", "").isdigit() and ":" not in self._host
        return dns_safe and named_host and self._host != "localhost"

    def _pool(self, name: str) -> _Pool:
        with self._lock:
            pool = self._pools.get(name)
            if pool is None:
                connect_timeout, read_timeout = self._timeouts
                pool = self._pools[name] = _Pool(
                    _proxy_route(self._scheme, name, self._port),
                    size=self._pool_size,
                    connect_timeout=connect_timeout,
                    read_timeout=read_timeout,
                )
            return pool

    @staticmethod
    def _xml(answer: Answer) -> ElementTree.Element:
        root = _parse_xml(answer.read(MAX_XML_BYTES))
        if root is None:
            raise S3BadAnswer("an answer that is not plain XML")
        if _local(root.tag) == "Error":
            raise S3Error(
                answer.status,
                _text(root, "Code") or "",
                _text(root, "Message") or "",
                answer.header("Retry-After"),
            )
        return root


def _answer_after_broken_send(
    connection: http.client.HTTPConnection, broken: OSError
) -> http.client.HTTPResponse:
    """The error answer a store sent before it stopped reading the body, else ``broken``."""
    try:
        response = connection.getresponse()
    except (OSError, http.client.HTTPException):
        raise broken from None
    if response.status < 300:
        raise broken  # a success for a body it did not take whole is no success
    return response


def _error_of(answer: Answer) -> S3Error:
    """The ``S3Error`` of a non-2xx answer; its body (bounded) names the code."""
    retry_after = answer.header("Retry-After")
    code = message = ""
    try:
        data = answer.read(MAX_ERROR_BYTES)
    except S3Failure:
        data = b""
    if data:
        root = _parse_xml(data)
        if root is not None and _local(root.tag) == "Error":
            code = _text(root, "Code") or ""
            message = _text(root, "Message") or ""
    return S3Error(answer.status, code or str(answer.status), message, retry_after)


def _parse_xml(data: bytes) -> ElementTree.Element | None:
    """The root of an S3 answer, or None when it is not XML or declares a DTD.

    S3 never sends a document type; refusing any ``<!DOCTYPE`` (hence every entity definition)
    before parsing leaves nothing for an entity-expansion attack from a hostile endpoint, and the
    body is already bounded (``MAX_XML_BYTES``).
    """
    if b"<!" in data.replace(b"<![CDATA[", b""):
        return None
    try:
        return ElementTree.fromstring(data)  # noqa: S314 - no DTD (checked above), bounded size
    except ElementTree.ParseError:
        return None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(node: ElementTree.Element, name: str) -> Iterator[ElementTree.Element]:
    return (child for child in node if _local(child.tag) == name)


def _text(node: ElementTree.Element, name: str) -> str | None:
    for child in _children(node, name):
        return child.text or ""
    return None


def _timestamp(text: str) -> datetime:
    """An S3 ISO 8601 time (``2026-12-02T01:02:03.000Z``) as an aware datetime."""
    try:
        return datetime.fromisoformat(text)
    except ValueError as error:
        raise S3BadAnswer(f"a time that is not ISO 8601: {text[:40]!r}") from error
