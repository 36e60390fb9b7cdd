"""Protocol 2 by hand, for tests that talk raw HTTP to the server: log in, enrol, open answers.

``device_login`` does what the client's auth flow does (``POST /login``, derive the device key
from the salt, ``POST /devices``) and returns the device token with the key, so a test can send
its own requests and open the envelopes the server answers. The fingerprint is a made-up machine
name, as ``FixedHardware`` gives; the default is the one ``Stack.client`` simulates, so a raw
login and a stack client of one account are the same device.
"""

from __future__ import annotations

import attrs
import httpx

from splitvault.domain import device, wire
from splitvault.domain.device import DeviceKey, Kind, Sealed


@attrs.frozen
class DeviceLogin:
    """A device token and the key pair it names (the private half stays in the test)."""

    token: str = attrs.field(repr=False)
    key: DeviceKey
    salt: bytes = attrs.field(repr=False)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def derive(password: str, salt: bytes, machine: str, secret: bytes | None = None) -> DeviceKey:
    """The device key a client on ``machine`` derives (Argon2id: tens of milliseconds)."""
    return device.derive_device_key(device.password_key(password, salt), machine, secret)


def login_answer(http: httpx.Client, email: str, password: str) -> httpx.Response:
    """The raw ``POST /login`` answer."""
    return http.post(f"/{wire.LOGIN}", json={"email": email, "password": password})


def enrol(
    http: httpx.Client,
    login_token: str,
    key: DeviceKey,
    tag: str = "00" * 32,
) -> httpx.Response:
    """The raw ``POST /devices`` answer for ``key``."""
    return http.post(
        f"/{wire.DEVICES}",
        json={wire.FIELD_PUBLIC_KEY: key.public.hex(), wire.FIELD_FINGERPRINT_TAG: tag},
        headers={"Authorization": f"Bearer {login_token}"},
    )


def device_login(
    http: httpx.Client,
    email: str,
    password: str,
    *,
    machine: str = "machine-a",
    secret: bytes | None = None,
) -> DeviceLogin:
    """Log in and enrol as a client on ``machine`` would; asserts each step succeeded."""
    answer = login_answer(http, email, password)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    salt = bytes.fromhex(body[wire.FIELD_SALT])
    password_key = device.password_key(password, salt)
    key = device.derive_device_key(password_key, machine, secret)
    enrolled = enrol(
        http, body[wire.FIELD_TOKEN], key, device.fingerprint_tag(password_key, machine)
    )
    assert enrolled.status_code == 200, enrolled.text
    return DeviceLogin(enrolled.json()[wire.FIELD_TOKEN], key, salt)


def device_token(
    url: str, email: str, password: str, *, machine: str = "machine-a", **client: object
) -> str:
    """A device token from the server at ``url`` (a fresh ``httpx.Client`` for the two calls)."""
    with httpx.Client(base_url=url, timeout=30, **client) as http:  # type: ignore[arg-type]
        return device_login(http, email, password, machine=machine).token


def sealed_of(answer: httpx.Response) -> Sealed:
    """The envelope of a sealed answer, with the device and version its headers name."""
    return Sealed(
        answer.content,
        answer.headers.get(wire.DEVICE_HEADER, ""),
        answer.headers.get(wire.VERSION_HEADER, ""),
    )


def open_answer(answer: httpx.Response, key: DeviceKey, kind: Kind, subject: str) -> bytes:
    """The plaintext of a sealed answer; asserts it opens."""
    assert answer.status_code == 200, answer.text
    return device.open_delivered(sealed_of(answer), key, kind, subject).unwrap()
