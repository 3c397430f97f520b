from __future__ import annotations

import pytest
from pydantic import ValidationError

from runner.fal.providers import FAL_QUEUE_URL, Provider

KEY = "key-id:SECRET0123456789"
TOKEN = "tok-abcdef0123456789"


@pytest.mark.parametrize(
    ("provider", "header"),
    [(Provider.fal(KEY), f"Key {KEY}"), (Provider.gateway("https://www.kkiai.com", TOKEN), f"Bearer {TOKEN}")],
)
def test_auth_header_and_hidden_credential(provider: Provider, header: str) -> None:
    assert provider.auth_headers() == {"Authorization": header}
    secret = provider.credential.get_secret_value()
    assert secret not in repr(provider) and secret not in str(provider)
    assert secret not in provider.model_dump_json()


def test_fal_defaults_and_submit_url() -> None:
    provider = Provider.fal(KEY)
    assert provider.base_url == FAL_QUEUE_URL
    assert provider.submit_url("fal-ai/wan/v2.2-a14b/image-to-image") == (
        "https://queue.fal.run/fal-ai/wan/v2.2-a14b/image-to-image"
    )
    assert provider.credential_name == "FAL_KEY"


GATEWAY = Provider.gateway("https://gw.example/fal/", TOKEN)
FAL = Provider.fal(KEY)


@pytest.mark.parametrize(
    ("provider", "url", "expected"),
    [
        # Same origin: used as given.
        (
            FAL,
            "https://queue.fal.run/fal-ai/wan/requests/1/status",
            "https://queue.fal.run/fal-ai/wan/requests/1/status",
        ),
        (FAL, "https://QUEUE.fal.run:443/a/b/requests/1", "https://QUEUE.fal.run:443/a/b/requests/1"),
        (FAL, "https://queue.fal.run/a/b/requests/1?logs=1#x", "https://queue.fal.run/a/b/requests/1?logs=1"),
        # Another origin: the path (and query) re-based onto the provider's base URL.
        (
            GATEWAY,
            "https://queue.fal.run/fal-ai/wan/requests/1/status",
            "https://gw.example/fal/fal-ai/wan/requests/1/status",
        ),
        (GATEWAY, "https://queue.fal.run/a/b/requests/1?logs=1", "https://gw.example/fal/a/b/requests/1?logs=1"),
        (FAL, "http://queue.fal.run/a/b/requests/1", "https://queue.fal.run/a/b/requests/1"),  # scheme differs
        (FAL, "https://queue.fal.run:8443/a/b/requests/1", "https://queue.fal.run/a/b/requests/1"),  # port differs
        (FAL, "https://evil.example/a/b/requests/1", "https://queue.fal.run/a/b/requests/1"),
        (FAL, "https://queue.fal.run.evil.example/a", "https://queue.fal.run/a"),
        (FAL, "https://user:pw@queue.fal.run/a", "https://queue.fal.run/a"),  # user info dropped
        (FAL, "/a/b/requests/1", "https://queue.fal.run/a/b/requests/1"),  # relative
    ],
)
def test_own_url(provider: Provider, url: str, expected: str) -> None:
    assert provider.own_url(url) == expected


@pytest.mark.parametrize(
    "base_url",
    ["ftp://queue.fal.run", "queue.fal.run", "https://", "https://gw.example/?k=1", "https://u:p@gw.example"],
)
def test_bad_base_url(base_url: str) -> None:
    with pytest.raises(ValidationError):
        Provider.gateway(base_url, TOKEN)


@pytest.mark.parametrize("credential", ["", "   ", "abc\r\nX-Injected: 1"])
def test_bad_credential(credential: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Provider.fal(credential)
    if credential.strip():
        assert credential not in str(caught.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"bad key {KEY}!", "bad key [redacted]!"),
        ("secret half SECRET0123456789 alone", "secret half [redacted] alone"),
        ("key-id alone is not secret", "key-id alone is not secret"),
        ([{"msg": KEY}], [{"msg": "[redacted]"}]),
        ({"detail": [KEY, 3]}, {"detail": ["[redacted]", 3]}),
        (None, None),
    ],
)
def test_redact(value: object, expected: object) -> None:
    assert Provider.fal(KEY).redact(value) == expected
