"""POST /score bounds its input: body size and JSON nesting depth. Every bad request is a 4xx with
a reason, never a 500."""
from __future__ import annotations

import json

import httpx
import pytest_asyncio
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from service.config import WorkerSettings
from service.decode import DeadLetter
from service.http import create_app, json_depth
from tests.service.test_http import serving_offline


@pytest_asyncio.fixture(loop_scope="function")
async def small_limits_worker(trained_store):
    async with serving_offline(trained_store, http_max_body_bytes=4096, http_max_json_depth=8) as worker:
        yield worker


def test_json_depth_counts_containers_not_scalars():
    assert json_depth(1) == 0 and json_depth({}) == 1 and json_depth([[]]) == 2
    assert json_depth({"a": [1, {"b": [2]}], "c": 3}) == 4
    deep: object = 0
    for _ in range(100_000):  # no recursion: far deeper than Python's recursion limit
        deep = [deep]
    assert json_depth(deep) == 100_000


async def test_bad_requests_get_4xx_with_a_reason(small_limits_worker):
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{small_limits_worker.http_port}") as client:
        cases = {
            "too large": (b'{"x": "' + b"a" * 5000 + b'"}', 413, "body_too_large"),
            "nested past the limit": (b'{"a":' * 9 + b"1" + b"}" * 9, 422, "too_deep"),
            "nested past the parser": (b"[" * 200_000 + b"]" * 200_000, 413, "body_too_large"),
            "not JSON": (b"{nope", 422, "not_a_document"),
            "not UTF-8": (b'{"a": "\xff\xfe"}', 422, "not_a_document"),
            "an array": (b"[1, 2]", 422, "not_a_document"),
            "empty": (b"", 422, "not_a_document"),
        }
        for name, (body, status, reason) in cases.items():
            response = await client.post("/score", content=body, headers={"content-type": "application/json"})
            assert (response.status_code, response.json()["reason"]) == (status, reason), name
            assert response.json()["error"], name
        # Chunked (no Content-Length): the limit holds while reading, not only from the header.
        async def chunks():
            for _ in range(10):
                yield b" " * 1000

        response = await client.post("/score", content=chunks(), headers={"content-type": "application/json"})
        assert response.status_code == 413


async def test_deeply_nested_json_within_the_body_limit_is_422_not_500(trained_store):
    async with (
        serving_offline(trained_store) as worker,  # default limits: 1 MiB, depth 32
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.http_port}") as client,
    ):
        for depth in (33, 5_000, 400_000):
            body = b"[" * depth + b"]" * depth
            response = await client.post("/score", content=body)
            assert response.status_code == 422 and response.json()["reason"] == "too_deep", depth


class _Scorer:
    """Stands in for the worker: the HTTP adapter's own handling is under test, not scoring."""

    settings = WorkerSettings(_env_file=None, http_max_body_bytes=4096, http_max_json_depth=8)  # type: ignore[call-arg]
    model_version = "v"

    async def score_document(self, document):
        return DeadLetter("missing_field", "shot_id: is missing", document) if "shot_id" not in document else {"ok": 1}


_BODIES = st.one_of(
    st.binary(max_size=300),
    st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=5),
                 lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
                 max_leaves=30).map(lambda v: json.dumps(v).encode()),
)


@hsettings(max_examples=300, deadline=None)
@given(body=_BODIES)
async def test_arbitrary_bodies_get_a_verdict_or_a_4xx_with_a_reason(body):
    app = create_app(_Scorer())  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.post("/score", content=body)
    assert response.status_code in (200, 413, 422), (body, response.text)
    if response.status_code != 200:
        assert response.json()["reason"] and response.json()["error"]
