"""The S3 client's SigV4 signer and wire behaviour.

The signer is checked three ways: AWS's published S3 examples (known answers), botocore's own
signer on arbitrary requests (the implementation S3-compatible stores are tested against), and moto
verifying real requests (``tests/security/test_least_privilege.py``, IAM enforced). The wire checks
run against a moto server and a recording forward proxy.
"""

from __future__ import annotations

import base64
import datetime as dt
import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitvault.adapters.s3_http import (
    EMPTY_SHA256,
    S3BadAnswer,
    S3Error,
    S3Http,
    S3TlsFailed,
    canonical_query,
    crc32_of,
    sign,
    uri_encode,
)
from splitvault.domain.config import S3Keys
from tests.support.certs import tls_files
from tests.support.moto_server import ADMIN_KEYS, MotoS3

AWS_EXAMPLE_KEYS = S3Keys("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
AWS_EXAMPLE_TIME = datetime(2013, 5, 24, tzinfo=UTC)
EXAMPLE_HOST = "examplebucket.s3.amazonaws.com"


def _signature(headers: dict[str, str]) -> str:
    return headers["Authorization"].rsplit("Signature=", 1)[1]


def test_the_aws_get_object_example() -> None:
    """AWS's "GET Object" example (a ranged GET of /test.txt) signs to its published value."""
    signed = sign(
        method="GET",
        path="/test.txt",
        query=[],
        headers={"Host": EXAMPLE_HOST, "Range": "bytes=0-9"},
        payload_hash=EMPTY_SHA256,
        keys=AWS_EXAMPLE_KEYS,
        region="us-east-1",
        when=AWS_EXAMPLE_TIME,
    )
    assert signed["x-amz-date"] == "20130524T000000Z"
    assert "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date," in signed["Authorization"]
    assert _signature(signed) == "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"


def test_the_aws_put_object_example() -> None:
    """AWS's "PUT Object" example: an encoded key, a signed payload hash, extra signed headers."""
    signed = sign(
        method="PUT",
        path=uri_encode("/test$file.text", keep_slash=True),
        query=[],
        headers={
            "Host": EXAMPLE_HOST,
            "Date": "Fri, 24 May 2013 00:00:00 GMT",
            "x-amz-storage-class": "REDUCED_REDUNDANCY",
        },
        payload_hash="44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072",
        keys=AWS_EXAMPLE_KEYS,
        region="us-east-1",
        when=AWS_EXAMPLE_TIME,
    )
    assert _signature(signed) == "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ([("lifecycle", "")], "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"),
        (
            [("prefix", "J"), ("max-keys", "2")],
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
        ),
    ],
)
def test_the_aws_bucket_examples(query: list[tuple[str, str]], expected: str) -> None:
    """AWS's "GET Bucket Lifecycle" and "Get Bucket (List Objects)" examples: sorted queries,
    empty values."""
    signed = sign(
        method="GET",
        path="/",
        query=query,
        headers={"Host": EXAMPLE_HOST},
        payload_hash=EMPTY_SHA256,
        keys=AWS_EXAMPLE_KEYS,
        region="us-east-1",
        when=AWS_EXAMPLE_TIME,
    )
    assert _signature(signed) == expected


_KEY_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),
    min_size=1,
    max_size=40,
)
_QUERY = st.lists(
    st.tuples(st.text(alphabet="abcdefgh-_.~%/+= ", min_size=1, max_size=8), _KEY_TEXT), max_size=4
)


@settings(max_examples=150, deadline=None)
@given(
    method=st.sampled_from(["GET", "PUT", "POST", "DELETE", "HEAD"]),
    key=_KEY_TEXT,
    query=_QUERY,
    header=st.text(alphabet="abc XYZ 0123 ,;=", max_size=20),
    region=st.sampled_from(["us-east-1", "eu-central-1", "auto"]),
    seconds=st.integers(0, 4_000_000_000),
)
def test_signatures_match_botocores_signer(  # noqa: PLR0917 - hypothesis draws
    method: str,
    key: str,
    query: list[tuple[str, str]],
    header: str,
    region: str,
    seconds: int,
) -> None:
    """On arbitrary keys (any Unicode), query strings and header values our signature equals
    botocore's S3 SigV4 signature of the same request at the same instant."""
    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    when = datetime.fromtimestamp(seconds, UTC)
    path = "/bucket/" + uri_encode(key, keep_slash=True)
    headers = {"Host": "127.0.0.1:9000", "x-amz-meta-note": header}
    ours = sign(
        method=method,
        path=path,
        query=query,
        headers=headers,
        payload_hash=EMPTY_SHA256,  # what botocore signs for an empty body
        keys=S3Keys("AKIDEXAMPLE", "secret/with+chars"),
        region=region,
        when=when,
    )
    url = "http://127.0.0.1:9000" + path + (f"?{canonical_query(query)}" if query else "")
    request = AWSRequest(method=method, url=url, headers={**headers})
    signer = botocore.auth.S3SigV4Auth(
        Credentials("AKIDEXAMPLE", "secret/with+chars"), "s3", region
    )
    with patch("botocore.auth.get_current_datetime", lambda *_, **__: when.replace(tzinfo=None)):
        signer.add_auth(request)
    assert ours["Authorization"] == request.headers["Authorization"]


def test_crc32_is_s3s_encoding() -> None:
    """``x-amz-checksum-crc32`` is the big-endian CRC-32 in base64 (the check value of
    ``123456789`` is 0xCBF43926)."""
    assert crc32_of(b"123456789") == base64.b64encode(bytes.fromhex("cbf43926")).decode()
    assert crc32_of(b"") == "AAAAAA=="


def test_query_encoding_is_sigv4s() -> None:
    """Names and values are encoded (``/`` too), pairs sorted, empty values kept as ``name=``."""
    assert canonical_query([("uploads", ""), ("prefix", "a/b c"), ("a", "~x")]) == (
        "a=~x&prefix=a%2Fb%20c&uploads="
    )


@pytest.fixture
def client(moto_s3: MotoS3) -> Iterator[S3Http]:
    http = S3Http(moto_s3.endpoint_url, moto_s3.region, ADMIN_KEYS, pool_size=2)
    yield http
    http.close()


def test_keys_of_any_text_round_trip_and_list(
    client: S3Http, moto_s3: MotoS3, s3_bucket: str
) -> None:
    """Keys with spaces, ``%``, ``+`` and non-ASCII text are stored, listed and read back as
    they were (path encoding, ``encoding-type=url`` decoding)."""
    keys = ["plain/a.big", "with space/50% off+more.big", "ünïcödé/模型.big"]
    for number, key in enumerate(keys):
        client.put_object(s3_bucket, key, bytes([number]) * 100)
    listed = {key for key, _ in client.list_objects(s3_bucket)}
    assert listed == set(keys)
    for number, key in enumerate(keys):
        size, etag = client.head_object(s3_bucket, key)
        assert size == 100
        answer = client.get_range(s3_bucket, key, 10, 20, if_match=etag)
        buffer = memoryview(bytearray(64))
        assert answer.readinto(buffer[:10]) == 10
        answer.close()
        assert bytes(buffer[:10]) == bytes([number]) * 10


def test_an_error_answer_names_its_code(client: S3Http, s3_bucket: str) -> None:
    """A missing key is an S3Error with S3's code and status; the connection stays usable."""
    with pytest.raises(S3Error) as raised:
        client.get_range(s3_bucket, "no/such.big", 0, 10, if_match="*")
    assert raised.value.status == 404 and raised.value.code == "NoSuchKey"
    client.put_object(s3_bucket, "then/this.big", b"x" * 10)
    assert client.head_object(s3_bucket, "then/this.big")[0] == 10


def test_a_wrong_secret_is_refused_by_a_verifying_store(moto_s3: MotoS3, s3_bucket: str) -> None:
    """Sanity of the failure path: a signature made with another secret is not accepted when
    the store verifies (moto's IAM enforcement), and the error says why."""
    with moto_s3.enforce_iam():
        wrong = S3Http(moto_s3.endpoint_url, moto_s3.region, S3Keys(ADMIN_KEYS.access_key_id, "x"))
        with pytest.raises(S3Error) as raised:
            wrong.put_object(s3_bucket, "denied.big", b"x")
        wrong.close()
    assert raised.value.status == 403


def _one_shot_server(answer: bytes) -> tuple[socket.socket, threading.Thread]:
    """A loopback server that answers one request with ``answer`` and closes."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        connection, _ = server.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


def test_a_store_that_ignores_range_is_refused() -> None:
    """A 200 with the whole object for a range from byte 10 would put the object's first bytes
    at offset 10: it is refused as a bad answer, not written."""
    server, thread = _one_shot_server(
        b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\nETag: "e"\r\n\r\n' + b"x" * 100
    )
    http = S3Http(f"http://127.0.0.1:{server.getsockname()[1]}", "us-east-1", ADMIN_KEYS)
    with pytest.raises(S3BadAnswer, match="bytes 10-19"):
        http.get_range("b", "k", 10, 20, if_match='"e"')
    http.close()
    thread.join(timeout=5)
    server.close()


def test_an_xml_answer_with_a_doctype_is_refused() -> None:
    """An endpoint answering a listing with a DTD (entity expansion) gets S3BadAnswer; nothing
    is parsed."""
    body = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]>'
        b"<ListBucketResult><Contents><Key>&a;</Key></Contents></ListBucketResult>"
    )
    server, thread = _one_shot_server(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    http = S3Http(f"http://127.0.0.1:{server.getsockname()[1]}", "us-east-1", ADMIN_KEYS)
    with pytest.raises(S3BadAnswer, match="not plain XML"):
        list(http.list_objects("b"))
    http.close()
    thread.join(timeout=5)
    server.close()


def test_the_secret_is_in_no_repr() -> None:
    """Neither the client's repr nor a signed request's visible parts carry the secret."""
    http = S3Http("https://s3.example.com", "us-east-1", S3Keys("AKIDEXAMPLE", "top-secret-key"))
    assert "top-secret-key" not in repr(http)
    signed = sign(
        method="GET",
        path="/b/k",
        query=[],
        headers={"Host": "s3.example.com"},
        payload_hash=EMPTY_SHA256,
        keys=S3Keys("AKIDEXAMPLE", "top-secret-key"),
        region="us-east-1",
        when=datetime(2026, 1, 1, tzinfo=dt.UTC),
    )
    assert all("top-secret-key" not in value for value in signed.values())


HEAD_ANSWER = b'HTTP/1.1 200 OK\r\nContent-Length: 42\r\nETag: "t"\r\n\r\n'


def _tls_server(cert: Path, key: Path, answers: int) -> tuple[socket.socket, threading.Thread]:
    """A loopback TLS server answering ``answers`` HEAD requests (an object of 42 bytes)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        for _ in range(answers):
            raw, _ = server.accept()
            try:
                with context.wrap_socket(raw, server_side=True) as connection:
                    connection.recv(65536)
                    connection.sendall(
                        b'HTTP/1.1 200 OK\r\nContent-Length: 42\r\nETag: "t"\r\n\r\n'
                    )
            except (ssl.SSLError, OSError):
                continue  # the client refused our certificate

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


def test_tls_verifies_against_aws_ca_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An https endpoint whose certificate a private CA signed is refused with the default
    bundle (S3TlsFailed: retrying cannot fix it) and trusted with ``AWS_CA_BUNDLE`` naming it."""
    ca, cert, key = tls_files(tmp_path)
    server, thread = _tls_server(cert, key, answers=2)
    endpoint = f"https://127.0.0.1:{server.getsockname()[1]}"
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    untrusting = S3Http(endpoint, "us-east-1", ADMIN_KEYS)
    with pytest.raises(S3TlsFailed):
        untrusting.head_object("bucket", "key")
    monkeypatch.setenv("AWS_CA_BUNDLE", str(ca))
    trusting = S3Http(endpoint, "us-east-1", ADMIN_KEYS)
    assert trusting.head_object("bucket", "key") == (42, '"t"')
    trusting.close()
    thread.join(timeout=5)
    server.close()


def test_an_answer_sent_before_the_body_was_taken_is_the_error(tmp_path: Path) -> None:
    """A store that refuses a part after reading only its headers (403) and closes: the upload
    fails with that 403 (final, AccessDenied upstream), not with the broken pipe (transient,
    retried for nothing)."""
    server = socket.create_server(("127.0.0.1", 0))
    refusal = (
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 93\r\nConnection: close\r\n\r\n"
        b"<Error><Code>AccessDenied</Code><Message>no write for these keys</Message>"
        b"</Error>            "
    )

    def refuse_early() -> None:
        connection, _ = server.accept()
        with connection:
            head = b""
            while b"\r\n\r\n" not in head:
                head += connection.recv(4096)
            connection.sendall(refusal)
            connection.shutdown(socket.SHUT_RDWR)

    thread = threading.Thread(target=refuse_early, daemon=True)
    thread.start()
    http = S3Http(f"http://127.0.0.1:{server.getsockname()[1]}", "us-east-1", ADMIN_KEYS)
    with pytest.raises(S3Error) as raised:
        http.upload_part("bucket", "key", "upload", 1, bytearray(32 << 20))
    assert (raised.value.status, raised.value.code) == (403, "AccessDenied")
    http.close()
    thread.join(timeout=5)
    server.close()


def test_listings_follow_every_page(client: S3Http, moto_s3: MotoS3, s3_bucket: str) -> None:
    """More than one page of objects (S3 answers at most 1,000 per page): every key comes back
    once, decoded, the prefix honoured; unfinished uploads list with their keys decoded too (moto
    answers those in one page, so their markers are not exercised here)."""
    admin = moto_s3.s3_client()
    keys = {f"many/item {number:04d}%.big" for number in range(1003)}
    for key in keys:
        admin.put_object(Bucket=s3_bucket, Key=key, Body=b"")
    admin.put_object(Bucket=s3_bucket, Key="other/outside.big", Body=b"")
    listed = [key for key, _ in client.list_objects(s3_bucket, "many/")]
    assert sorted(listed) == sorted(keys)
    started = {client.create_multipart_upload(s3_bucket, f"up/key {n}%.big") for n in range(3)}
    uploads = list(client.list_multipart_uploads(s3_bucket, "up/"))
    assert {upload.upload_id for upload in uploads} == started
    assert {upload.key for upload in uploads} == {f"up/key {n}%.big" for n in range(3)}
