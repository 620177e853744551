"""The gate as ASGI middleware in front of a stand-in app (the feedback endpoint arrives with the
feedback issue): audit lines name the token, never the token itself; refused requests never reach
the app; the failure budget answers 429."""
from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from service.http_auth import FailureLimiter, token_line
from service.http_guard import HttpGuard, TokenStore

FEEDBACK = "mw_feedback-" + "f" * 34
SCORER = "mw_scorer-" + "s" * 36


class StandIn:
    """Records what got through."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def __call__(self, scope, receive, send) -> None:
        self.seen.append(f"{scope['method']} {scope['path']}")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
async def gate(tmp_path: Path):
    path = tmp_path / "tokens.txt"
    path.write_text(token_line("line-3-lead", ["feedback"], FEEDBACK) + "\n" + token_line("mes", ["score"], SCORER) + "\n")
    tokens = TokenStore(None, path, poll_s=1.0)
    await tokens.start()
    app = StandIn()
    guard = HttpGuard(app, tokens, metrics_open=True, limiter=FailureLimiter(burst=3, window_s=600),
                      registry=CollectorRegistry())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://plant") as client:
        yield client, app, guard


async def test_every_feedback_write_is_audited_with_the_token_name_never_the_token(gate):
    client, _app, _ = gate
    with capture_logs() as logs:
        ok = await client.post("/feedback", json={"label": "false_alarm"}, headers={"authorization": f"Bearer {FEEDBACK}"})
        scored = await client.post("/score", json={}, headers={"authorization": f"Bearer {SCORER}"})
    assert ok.status_code == 204 and scored.status_code == 204
    audits = [entry for entry in logs if entry["event"] == "audit"]
    assert audits == [{"event": "audit", "token": "line-3-lead", "method": "POST", "path": "/feedback",
                       "client": "127.0.0.1", "log_level": "info"}]
    assert FEEDBACK not in repr(logs) and SCORER not in repr(logs)


async def test_refused_requests_never_reach_the_app_and_the_budget_ends_in_429(gate):
    client, app, guard = gate
    codes = []
    for _ in range(5):
        codes.append((await client.post("/feedback", json={}, headers={"authorization": f"Bearer {SCORER}"})).status_code)
    blocked = await client.post("/feedback", json={}, headers={"authorization": f"Bearer {FEEDBACK}"})
    assert codes == [403, 403, 403, 429, 429]  # burst 3: the third failure uses the budget up
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) == 200  # 600 s / 3 per failure
    assert app.seen == []
    assert await client.get("/metrics") is not None and app.seen == ["GET /metrics"]  # metrics_open: passes
    assert guard.failures.labels("missing_scope")._value.get() == 3
    assert guard.failures.labels("rate_limited")._value.get() == 3
