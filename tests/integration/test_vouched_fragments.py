"""The fragment answer vouches for a publisher key, through the real server and both clients.

``PUT /keys/{version}`` declaring a key stores it with the fragment; ``GET /keys/{version}`` and
``GET /keys`` answer it in ``X-Splitvault-Publisher-Key``, which the envelope's ``info`` binds: a
proxy that strips or swaps the header makes the fragment not open (``WrongKey``), so a client
never pairs a fragment with a key the server did not send with it.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from splitvault.adapters.http_key_fragments import HttpKeyFragments
from splitvault.domain import signature, wire
from splitvault.domain.errors import WrongKey
from splitvault.domain.ports import VouchedFragment
from tests.security.hostile import failure, ok
from tests.support.devices import device_login
from tests.support.stack import DOWNLOADER, PASSWORD, UPLOADER, Stack

PUBLISHER = signature.PublisherKey.from_seed(bytes(range(32)))
OTHER = signature.PublisherKey.from_seed(bytes(range(1, 33)))


class HeaderEditingTransport(httpx.BaseTransport):
    """Real HTTP, with ``X-Splitvault-Publisher-Key`` removed or replaced in every answer."""

    def __init__(self, replacement: str | None) -> None:
        self._inner = httpx.HTTPTransport()
        self._replacement = replacement

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        if wire.PUBLISHER_KEY_HEADER in response.headers:
            del response.headers[wire.PUBLISHER_KEY_HEADER]
            if self._replacement is not None:
                response.headers[wire.PUBLISHER_KEY_HEADER] = self._replacement
        return response


def _compat_client(stack: Stack, transport: httpx.BaseTransport | None = None) -> HttpKeyFragments:
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        login = device_login(http, DOWNLOADER, PASSWORD)
    return HttpKeyFragments(stack.url, login.token, device=login.key, transport=transport)


def test_both_clients_receive_the_key_a_fragment_was_registered_under(
    stack: Stack, tmp_path: Path
) -> None:
    key_file = tmp_path / "publisher.ed25519"
    key_file.write_text(PUBLISHER.seed.hex())
    key_file.chmod(0o600)
    uploader = stack.client(UPLOADER, signing_key_file=key_file, cache=tmp_path / "up")
    signed, unsigned = os.urandom(32), os.urandom(32)
    ok(uploader.api.put_fragment("9.1", signed, PUBLISHER.public))
    ok(uploader.api.put_fragment("9.0", unsigned))

    reader = stack.client(DOWNLOADER, cache=tmp_path / "down")
    assert ok(reader.api.vouched_fragment("9.1")) == VouchedFragment(signed, PUBLISHER.public)
    assert ok(reader.api.vouched_fragment("9.0")) == VouchedFragment(unsigned, None)
    compat = _compat_client(stack)
    assert ok(compat.vouched_fragment("9.1")) == VouchedFragment(signed, PUBLISHER.public)
    assert ok(compat.get_fragment("9.0")) == unsigned
    assert ok(compat.get_latest_fragment()) == ("9.0", unsigned)


def test_a_stripped_or_swapped_publisher_header_does_not_open(stack: Stack, tmp_path: Path) -> None:
    ok(stack.client(UPLOADER, cache=tmp_path / "up").api.put_fragment("9.2", os.urandom(32)))
    # The uploader recorded no key above; record one now by registering a signed version.
    key_file = tmp_path / "publisher.ed25519"
    key_file.write_text(PUBLISHER.seed.hex())
    key_file.chmod(0o600)
    signer = stack.client(UPLOADER, signing_key_file=key_file, cache=tmp_path / "up2")
    ok(signer.api.put_fragment("9.3", os.urandom(32), PUBLISHER.public))
    for replacement in (None, OTHER.public.hex()):
        edited = _compat_client(stack, HeaderEditingTransport(replacement))
        refused = failure(edited.vouched_fragment("9.3"))
        assert isinstance(refused, WrongKey), refused
        # An answer that carried no key is unchanged by the proxy and still opens.
        assert ok(edited.vouched_fragment("9.2")).publisher_key is None
