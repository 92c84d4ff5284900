"""shared.crypto's base64url: the standard library's URL-safe alphabet without padding, for
every length of the last group, and read back by `b64d`."""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st

from shared.crypto import b64d, b64e


@given(st.binary(max_size=200))
def test_b64e_is_urlsafe_base64_without_padding(data: bytes) -> None:
    assert b64e(data) == base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")
    assert b64d(b64e(data)) == data


def test_the_alphabet_ends_in_minus_and_underscore() -> None:
    assert b64e(b"\xfb\xff") == "-_8"
    assert b64e(b"") == ""
