"""The multipart fast path agrees with Starlette's parser, or steps aside (returns None)."""

from __future__ import annotations

import asyncio

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from attacker.client import multipart_body
from victim_service.multipart import boundary_of, split_images


def _starlette(body: bytes, content_type: str) -> list[tuple[str, bytes]] | None:
    """What the full parser makes of `body`: the `images` parts, or None if it refuses."""
    sent = False

    async def receive():
        nonlocal sent
        chunk, sent = (b"" if sent else body), True
        return {"type": "http.request", "body": chunk, "more_body": False}

    async def parse():
        headers = [(b"content-type", content_type.encode())]
        request = Request({"type": "http", "method": "POST", "headers": headers}, receive)
        try:
            form = await request.form()
        except Exception:
            return None
        parts = []
        for part in form.getlist("images"):
            if isinstance(part, str):
                return None
            parts.append((part.content_type or "application/octet-stream", await part.read()))
        return parts

    return asyncio.run(parse())


def _fast(body: bytes, content_type: str, max_parts: int = 64):
    boundary = boundary_of(content_type)
    return None if boundary is None else split_images(body, boundary, max_parts)


payload = st.binary(min_size=0, max_size=200)


@settings(max_examples=150, deadline=None)
@given(st.lists(payload, min_size=1, max_size=6))
def test_our_clients_bodies_parse_exactly_as_starlette_parses_them(images):
    body, content_type = multipart_body(images)
    fast = _fast(body, content_type)
    assert fast is not None  # the attacker's own bodies always take the fast path
    assert fast == _starlette(body, content_type)
    assert [data for _, data in fast] == images


@settings(max_examples=60, deadline=None)
@given(st.lists(payload, min_size=1, max_size=4))
def test_httpx_bodies_parse_as_starlette_parses_them(images):
    request = httpx.Request(
        "POST",
        "http://x/",
        files=[("images", (f"{i}.png", d, "image/png")) for i, d in enumerate(images)],
    )
    body, content_type = request.read(), request.headers["content-type"]
    fast = _fast(body, content_type)
    assert fast is None or fast == _starlette(body, content_type)


@settings(max_examples=300, deadline=None)
@given(st.lists(payload, min_size=1, max_size=3), st.integers(0, 400), st.binary(max_size=8))
def test_mangled_bodies_are_left_to_starlette_or_parsed_the_same(images, cut, junk):
    body, content_type = multipart_body(images)
    mangled = body[:cut] + junk + body[cut + len(junk) :]
    fast = _fast(mangled, content_type)
    if fast is not None:
        assert fast == _starlette(mangled, content_type)


def test_unusual_shapes_step_aside():
    body, content_type = multipart_body([b"a", b"b", b"c"])
    assert _fast(body, content_type, max_parts=2) is None  # over the limit: full parser
    assert _fast(b"preamble\r\n" + body, content_type) is None
    assert _fast(body.replace(b'name="images"', b'name="other"', 1), content_type) is None
    assert _fast(body.replace(b'; filename="0.png"', b"", 1), content_type) is None
    assert _fast(body[:-4], content_type) is None  # no closing boundary
    assert boundary_of("multipart/form-data") is None
