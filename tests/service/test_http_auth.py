"""The access rules of the HTTP API as pure logic: token table, decision, failure limit, exposure."""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.http_auth import (
    MAX_AUTHORIZATION_BYTES,
    SCOPES,
    ExposureError,
    FailureLimiter,
    TokenFileError,
    authorize,
    check_exposure,
    is_loopback,
    new_token,
    parse_tokens,
    token_digest,
    token_line,
)
from service.http_guard import ANY_TOKEN, required_scope

TOKEN = "mw_" + "a" * 43
OTHER = "mw_" + "b" * 43


def table_of(*lines: str):
    return parse_tokens("\n".join(lines), "tokens.txt")


def bearer(token: str) -> bytes:
    return f"Bearer {token}".encode()


# -- the table ---------------------------------------------------------------------------------


def test_a_line_made_by_token_line_is_read_back_with_its_scopes():
    table = table_of(token_line("op", ["recipes", "score"], TOKEN), token_line("prom", ["metrics"], OTHER))
    assert table.names() == ["op", "prom"]
    assert table.by_digest[token_digest(TOKEN)].scopes == {"score", "recipes"}
    assert token_line("op", ["recipes", "score"], TOKEN) == f"op score,recipes sha256:{hashlib.sha256(TOKEN.encode()).hexdigest()}"


def test_the_token_itself_is_never_in_the_table():
    line = token_line("op", ["score"], TOKEN)
    assert TOKEN not in line and TOKEN[3:] not in line


def test_comments_blank_lines_and_semicolons_separate_entries():
    text = f"# operators\n\n{token_line('op', ['score'], TOKEN)}  # night shift\n;{token_line('b', ['metrics'], OTHER)}"
    assert parse_tokens(text, "env").names() == ["b", "op"]


@pytest.mark.parametrize("text, expected", [
    ("op score", "tokens.txt:1: expected 'NAME SCOPES sha256:HEX' (3 fields), got 2"),
    ("op score sha256:" + "A" * 64, "tokens.txt:1: expected sha256:<64 lowercase hex digits>"),
    ("op score sha256:" + "a" * 63, "tokens.txt:1: expected sha256:<64 lowercase hex digits>"),
    (f"op score {TOKEN}", "looks like a token in clear"),
    ("op scor sha256:" + "a" * 64, "tokens.txt:1: scope 'scor' unknown"),
    ("op , sha256:" + "a" * 64, "tokens.txt:1: scope ',' unknown"),
    ("o/p score sha256:" + "a" * 64, "tokens.txt:1: token name 'o/p'"),
    ("n" * 65 + " score sha256:" + "a" * 64, "token name"),
    ("\nop score sha256:" + "a" * 64 + "\nop metrics sha256:" + "b" * 64, "tokens.txt:3: token name 'op' appears twice"),
    ("op score sha256:" + "a" * 64 + "\nx metrics sha256:" + "a" * 64, "tokens.txt:2: the same token is listed twice"),
])
def test_a_bad_line_is_named_with_its_place_and_what_was_expected(text, expected):
    with pytest.raises(TokenFileError, match=None) as caught:
        parse_tokens(text, "tokens.txt")
    assert expected in str(caught.value)


def test_new_tokens_are_long_random_and_distinct():
    made = {new_token() for _ in range(200)}
    assert len(made) == 200
    assert all(t.startswith("mw_") and len(t) == 46 for t in made)


# -- the decision ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table():
    return table_of(token_line("op", ["score", "recipes"], TOKEN), token_line("prom", ["metrics"], OTHER))


@pytest.mark.parametrize("header, scope, status, reason", [
    (None, "score", 401, "missing_token"),
    (b"", "score", 401, "missing_token"),
    (b"   ", "score", 401, "missing_token"),
    (b"Basic b3A6cGFzcw==", "score", 401, "bad_scheme"),
    (b"Bearer", "score", 401, "bad_scheme"),
    (b"Bearer ", "score", 401, "bad_scheme"),
    (b"Token " + TOKEN.encode(), "score", 401, "bad_scheme"),
    (bearer(TOKEN[:-1]), "score", 401, "invalid_token"),
    (bearer(TOKEN + "a"), "score", 401, "invalid_token"),
    (bearer(TOKEN.upper()), "score", 401, "invalid_token"),
    (bearer(TOKEN), "metrics", 403, "missing_scope"),
    (bearer(OTHER), "score", 403, "missing_scope"),
    (bearer(TOKEN), "feedback", 403, "missing_scope"),
    (bearer(TOKEN), "score", 0, "ok"),
    (bearer(TOKEN), "recipes", 0, "ok"),
    (b"bearer " + TOKEN.encode(), "score", 0, "ok"),  # the scheme is case-insensitive (RFC 7235)
    (b"Bearer   " + TOKEN.encode() + b"  ", "score", 0, "ok"),
    (bearer(OTHER), "metrics", 0, "ok"),
])
def test_each_header_gets_its_answer(table, header, scope, status, reason):
    decision = authorize(table, header, scope)
    assert (decision.status, decision.reason) == (status, reason)
    assert decision.allowed == (status == 0)
    if status:
        assert "op" not in decision.message.split() and TOKEN not in decision.message  # never who exists


def test_the_size_line_is_inclusive():
    table = table_of(token_line("long", ["score"], "x" * (MAX_AUTHORIZATION_BYTES - len("Bearer "))))
    at_line = b"Bearer " + b"x" * (MAX_AUTHORIZATION_BYTES - len("Bearer "))
    assert len(at_line) == MAX_AUTHORIZATION_BYTES
    assert authorize(table, at_line, "score").allowed
    over = at_line + b"x"
    assert authorize(table, over, "score").reason == "oversized"


def test_an_empty_table_refuses_everything():
    assert authorize(parse_tokens("", "t"), bearer(TOKEN), "score").reason == "invalid_token"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=700))
def test_no_header_but_the_exact_token_is_ever_allowed(header):
    table = table_of(token_line("op", list(SCOPES), TOKEN))
    decision = authorize(table, header, "score")
    stripped = header.strip()
    scheme, _, credential = stripped.partition(b" ")
    assert decision.allowed == (len(header) <= MAX_AUTHORIZATION_BYTES and scheme.lower() == b"bearer"
                                and credential.strip() == TOKEN.encode())


# -- which endpoint needs what -----------------------------------------------------------------


@pytest.mark.parametrize("method, path, metrics_open, scope", [
    ("GET", "/healthz", False, None),
    ("GET", "/readyz", False, None),
    ("GET", "/metrics", False, "metrics"),
    ("GET", "/metrics", True, None),
    ("POST", "/score", False, "score"),
    ("GET", "/score", True, "score"),
    ("GET", "/recipes/F01/ITM-001", False, "recipes"),
    ("GET", "/recipes/", False, "recipes"),
    ("POST", "/feedback", False, "feedback"),
    ("GET", "/docs", True, ANY_TOKEN),
    ("GET", "/openapi.json", True, ANY_TOKEN),
    ("GET", "/healthz/", False, ANY_TOKEN),
    ("GET", "/recipes", False, ANY_TOKEN),
    ("GET", "/", False, ANY_TOKEN),
])
def test_each_path_needs_its_scope(method, path, metrics_open, scope):
    assert required_scope(method, path, metrics_open) == scope


# -- the failure limit -------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_burst_is_exact_and_the_budget_refills_at_its_rate():
    clock = Clock()
    limiter = FailureLimiter(burst=3, window_s=30.0, clock=clock)  # one failure back every 10 s
    assert limiter.retry_after("a") == 0
    assert [limiter.failed("a") for _ in range(2)] == [False, False]
    assert limiter.retry_after("a") == 0  # two used, one left
    assert limiter.failed("a") is True  # the third uses the budget up: reported once
    assert limiter.retry_after("a") == pytest.approx(10.0)
    clock.now += 9.999
    assert limiter.retry_after("a") == pytest.approx(0.001, abs=1e-6)
    clock.now += 0.001
    assert limiter.retry_after("a") == 0  # exactly one back: may try once more
    assert limiter.failed("a") is True
    assert limiter.retry_after("b") == 0  # other clients are not affected
    clock.now += 1000
    assert limiter.retry_after("a") == 0 and limiter.failed("a") is False  # refilled to the burst, not beyond


def test_a_burst_of_one_blocks_after_the_first_failure():
    clock = Clock()
    limiter = FailureLimiter(burst=1, window_s=5.0, clock=clock)
    assert limiter.failed("a") is True
    assert limiter.retry_after("a") == pytest.approx(5.0)


def test_the_client_table_is_bounded_least_recent_first():
    clock = Clock()
    limiter = FailureLimiter(burst=1, window_s=60.0, max_clients=100, clock=clock)
    for i in range(10_000):
        limiter.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 100
    assert limiter.retry_after("10.0.0.0") == 0  # forgotten
    assert limiter.retry_after("10.0.39.15") > 0  # the last one is remembered


@pytest.mark.parametrize("kwargs", [{"burst": 0}, {"window_s": 0.0}, {"max_clients": 0}])
def test_limiter_settings_are_checked(kwargs):
    with pytest.raises(ValueError):
        FailureLimiter(**kwargs)


# -- exposure ----------------------------------------------------------------------------------


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("LOCALHOST", True), ("0.0.0.0", False), ("::", False), ("", False), ("10.0.0.5", False),
    ("worker.plant.local", False), ("127.0.0.1.nip.io", False),
])
def test_only_loopback_addresses_count_as_private(host, loopback):
    assert is_loopback(host) == loopback


def test_open_scoped_endpoints_on_the_network_are_refused_unless_asked_for():
    empty = parse_tokens("", "t")
    with pytest.raises(ExposureError, match=r"0.0.0.0 would serve /score.*--http-allow-open"):
        check_exposure("0.0.0.0", empty, allow_open=False)
    check_exposure("0.0.0.0", empty, allow_open=True)
    check_exposure("127.0.0.1", empty, allow_open=False)
    check_exposure("0.0.0.0", table_of(token_line("op", ["score"], TOKEN)), allow_open=False)


# -- exact answers (what a client and an operator read) ----------------------------------------


def test_each_refusal_says_exactly_what_to_do(table):
    assert authorize(table, None, "score").message == (
        "this endpoint needs a bearer token with the 'score' scope (header 'Authorization: Bearer <token>')")
    oversized = authorize(table, b"Bearer " + b"x" * MAX_AUTHORIZATION_BYTES, "score")
    assert (oversized.status, oversized.message) == (401, f"Authorization header over {MAX_AUTHORIZATION_BYTES} bytes")
    assert authorize(table, b"Basic x", "score").message == "expected 'Authorization: Bearer <token>'"
    assert authorize(table, bearer("mw_nope"), "score").message == "token not accepted"
    assert authorize(table, bearer(TOKEN), "metrics").message == "this token does not carry the 'metrics' scope"


def test_an_accepted_request_knows_whose_token_it_was(table):
    decision = authorize(table, bearer(OTHER), "metrics")
    assert decision.token is not None and decision.token.name == "prom" and decision.token.scopes == {"metrics"}


def test_token_line_refusals_name_the_problem():
    with pytest.raises(TokenFileError) as caught:
        token_line("o/p", ["score"], TOKEN)
    assert str(caught.value) == "token name 'o/p': expected 1-64 letters, digits or _.@-, not starting with mw_"
    with pytest.raises(TokenFileError) as caught:
        token_line("n" * 100, ["score"], TOKEN)
    assert str(caught.value).startswith(f"token name {'n' * 80!r}:")
    with pytest.raises(TokenFileError):
        token_line("mw_op", ["score"], TOKEN)
    with pytest.raises(TokenFileError) as caught:
        token_line("op", ["score", "admin"], TOKEN)
    assert str(caught.value) == "scopes score,admin: expected one or more of score, recipes, feedback, metrics"
    with pytest.raises(TokenFileError) as caught:
        token_line("op", [], TOKEN)
    assert str(caught.value) == "scopes (none): expected one or more of score, recipes, feedback, metrics"


def test_table_errors_are_exact_and_bounded():
    long_name = "n" * 200
    with pytest.raises(TokenFileError) as caught:
        parse_tokens(f"{long_name} score sha256:{'a' * 64}", "t")
    assert str(caught.value) == f"t:1: token name {'n' * 80!r}: expected 1-64 letters, digits or _.@-"
    with pytest.raises(TokenFileError) as caught:
        parse_tokens(f"op {'s' * 100} sha256:{'a' * 64}", "t")
    assert str(caught.value) == (f"t:1: scope {'s' * 40!r} unknown; expected one or more of score, recipes, feedback, "
                                 "metrics, comma-separated")
    with pytest.raises(TokenFileError) as caught:
        parse_tokens("op score md5:abc", "t")
    assert str(caught.value) == "t:1: expected sha256:<64 lowercase hex digits>"  # no hint: not a token in clear
    with pytest.raises(TokenFileError) as caught:
        parse_tokens(f"op score {TOKEN}", "t")
    assert str(caught.value) == ("t:1: expected sha256:<64 lowercase hex digits> (this looks like a token in clear: "
                                 "store its digest, see `moldwatch token create`)")


def test_a_comment_may_hold_hashes_itself():
    line = token_line("op", ["score"], TOKEN)
    assert parse_tokens(f"{line}  # rotated 2026-12-05 # by kim", "t").names() == ["op"]


def test_any_string_has_a_digest_even_an_undecodable_one():
    assert token_digest("\udcff") == hashlib.sha256(b"\xff").hexdigest()  # surrogateescape: the raw byte


def test_exposure_message_is_exact():
    with pytest.raises(ExposureError) as caught:
        check_exposure("0.0.0.0", parse_tokens("", "t"), allow_open=False)
    assert str(caught.value) == (
        "HTTP on 0.0.0.0 would serve /score, /recipes and /metrics to anyone on the network: give tokens "
        "(--http-tokens-file or MOLDWATCH_HTTP_TOKENS; make one with `moldwatch token create NAME --scopes ...`), "
        "bind to 127.0.0.1 (--http-host), or accept it explicitly with --http-allow-open (insecure)")


def test_limiter_defaults_and_smallest_settings():
    limiter = FailureLimiter()
    assert (limiter.burst, limiter.rate, limiter.max_clients) == (20, 20 / 60.0, 10_000)
    FailureLimiter(burst=1, window_s=0.5, max_clients=1)  # the smallest accepted values
    with pytest.raises(ValueError, match=r"^burst >= 1, window_s > 0 and max_clients >= 1 expected$"):
        FailureLimiter(max_clients=0)


def test_a_budget_above_one_never_asks_to_wait():
    clock = Clock()
    limiter = FailureLimiter(burst=4, window_s=40.0, clock=clock)  # 0.1 back per second
    for _ in range(4):
        limiter.failed("a")
    clock.now += 15.0  # 1.5 back
    assert limiter.retry_after("a") == 0.0


def test_a_token_pasted_as_a_name_is_refused_without_echoing_it():
    with pytest.raises(TokenFileError) as caught:
        parse_tokens(f"{TOKEN} score sha256:{'a' * 64}", "t")
    assert str(caught.value) == ("t:1: the name looks like a token; expected 'NAME SCOPES sha256:HEX' with a name such "
                                 "as mes-gateway (names are logged, tokens never)")
