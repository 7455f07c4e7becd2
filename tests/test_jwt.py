"""JWT access tokens: the proxy as an OAuth 2.1 resource server. A token proves its principal only when its
signature verifies with the issuer's published key under an accepted algorithm, and issuer, audience, `exp` and
`nbf` hold; every forgery and mistake gets 401. Keys rotate; what a verified token proves is cached.

The issuer is tests/issuer.py, its JWKS served on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from mcpstore_proxy.auth import Authenticator
from mcpstore_proxy.auth.settings import AuthSettings, JwtSettings
from mcpstore_proxy.errors import AuthenticationError
from mcpstore_proxy.principals import Principal
from tests.conversation import structured
from tests.inprocess import running_app
from tests.issuer import AUDIENCE, ISSUER, TestIssuer, serving_issuer
from tests.support import connect, fixture_server, write_config

pytestmark = pytest.mark.anyio


@pytest.fixture
def issuer() -> Generator[TestIssuer]:
    with serving_issuer(TestIssuer()) as serving:
        yield serving


def authenticator(issuer: TestIssuer, **options: Any) -> Authenticator:
    settings = JwtSettings(issuer=ISSUER, audience=AUDIENCE, jwks_url=issuer.jwks_url, **options)
    return Authenticator(AuthSettings(jwt=settings), admin_token=None)


async def test_a_valid_token_proves_the_principal_its_subject_names(issuer: TestIssuer) -> None:
    principal = await authenticator(issuer).authenticate(f"Bearer {issuer.mint('alice')}")
    assert principal == Principal("alice", None, is_admin=False)


async def test_agents_and_admin_come_from_the_configured_claims(issuer: TestIssuer) -> None:
    verify = authenticator(issuer, agents_claim="agents", admin_claim="roles")
    granted = await verify.authenticate(f"Bearer {issuer.mint('alice', agents='team_1 team_2', roles=['admin'])}")
    assert granted == Principal("alice", frozenset({"team_1", "team_2"}), is_admin=True)
    plain = await verify.authenticate(f"Bearer {issuer.mint('bob', agents=['team_2'], roles=['reader'])}")
    assert plain == Principal("bob", frozenset({"team_2"}), is_admin=False)
    assert not plain.may_use_agent("team_1")
    assert plain.may_use_agent("")  # the store's scope is everyone's


FORGERIES: dict[str, tuple[Callable[[TestIssuer], str], str]] = {
    "expired": (lambda issuer: issuer.mint("alice", lifetime_seconds=-120), "expired"),
    "not-yet-valid": (lambda issuer: issuer.mint("alice", not_before_in_seconds=120), "not valid yet"),
    "wrong-issuer": (lambda issuer: issuer.mint("alice", issuer="https://evil.test/"), "another issuer"),
    "wrong-audience": (lambda issuer: issuer.mint("alice", audience="http://other.test/mcp"), "another audience"),
    "unknown-kid": (lambda issuer: issuer.mint("alice", kid="no-such-key"), "does not publish"),
    "alg-none": (lambda issuer: issuer.unsigned("alice"), "'none' is not accepted"),
    "hmac-with-public-key": (lambda issuer: issuer.hmac_with_public_key("alice"), "'HS256' is not accepted"),
    "tampered-signature": (lambda issuer: issuer.tampered("bob", as_subject="alice"), "does not verify"),
    "garbage": (lambda issuer: "not.a.jwt", "not a JWT"),
}
"""How each forgery or mistake is made, and what the refusal says."""


@pytest.mark.parametrize("case", FORGERIES)
async def test_every_forged_or_wrong_token_is_refused_saying_why(issuer: TestIssuer, case: str) -> None:
    forge, why = FORGERIES[case]
    with pytest.raises(AuthenticationError) as refused:
        await authenticator(issuer).authenticate(f"Bearer {forge(issuer)}")
    assert why in refused.value.message
    assert refused.value.reason == "invalid_token"


async def test_a_token_signed_by_a_rotated_key_is_accepted_once_the_issuer_publishes_it(issuer: TestIssuer) -> None:
    verify = authenticator(issuer, jwks_refetch_seconds=0)
    assert (await verify.authenticate(f"Bearer {issuer.mint('alice')}")).name == "alice"
    issuer.rotate()
    issuer.retire()
    assert (await verify.authenticate(f"Bearer {issuer.mint('bob')}")).name == "bob"


async def test_unknown_key_ids_do_not_make_the_proxy_fetch_the_keys_again_and_again(issuer: TestIssuer) -> None:
    verify = authenticator(issuer)  # at most one fetch for unknown key ids every 10 s
    await verify.authenticate(f"Bearer {issuer.mint('alice')}")
    for attempt in range(5):
        with pytest.raises(AuthenticationError):
            await verify.authenticate(f"Bearer {issuer.mint('mallory', kid=f'made-up-{attempt}')}")
    assert issuer.fetches == 1


async def test_what_a_verified_token_proves_is_cached_until_it_expires(issuer: TestIssuer) -> None:
    verify = authenticator(issuer)
    token = issuer.mint("alice")
    for _ in range(3):
        assert (await verify.authenticate(f"Bearer {token}")).name == "alice"
    assert issuer.fetches == 1
    assert "1 proofs cached" in repr(verify)


async def test_only_a_token_not_yet_verified_needs_an_await_to_prove_its_principal(issuer: TestIssuer) -> None:
    verify = authenticator(issuer)
    header = f"Bearer {issuer.mint('alice')}"
    assert verify.proven(header) is None  # a JWT never seen: verified by `authenticate`, which may fetch keys
    assert (await verify.authenticate(header)).name == "alice"
    assert verify.proven(header) == Principal("alice", None, is_admin=False)  # every later request: no await
    assert verify.proven(f"Bearer {issuer.mint('bob')}") is None
    with pytest.raises(AuthenticationError):
        verify.proven(None)


async def test_a_request_without_a_token_is_refused_with_no_error_code_so_the_client_may_start_its_oauth_flow(
    issuer: TestIssuer,
) -> None:
    with pytest.raises(AuthenticationError) as refused:
        await authenticator(issuer).authenticate(None)
    assert refused.value.reason is None


async def test_over_http_a_jwt_reaches_the_tools_and_a_bad_one_gets_401_with_the_metadata_url(
    tmp_path: Path, issuer: TestIssuer
) -> None:
    config = write_config(
        tmp_path,
        {"state": fixture_server("state")},
        auth={"jwt": {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": issuer.jwks_url}},
    )
    async with running_app(config, wait_for_upstreams=False) as proxy:
        headers = {"Authorization": f"Bearer {issuer.mint('alice')}"}
        async with connect(proxy.url, headers=headers) as client:
            assert structured(await client.call_tool("state_echo", {"text": "in"})) == "in"
        async with httpx2.AsyncClient() as http:
            refused = await http.post(
                proxy.url,
                json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}},
                headers={"Authorization": f"Bearer {issuer.mint('alice', lifetime_seconds=-120)}"},
            )
            challenge = refused.headers["www-authenticate"]
            metadata_url = f"http://127.0.0.1:{proxy.port}/.well-known/oauth-protected-resource/mcp"
            metadata = (await http.get(metadata_url)).json()
        assert refused.status_code == 401
        assert f'resource_metadata="{metadata_url}"' in challenge
        assert 'error="invalid_token"' in challenge
        assert metadata["authorization_servers"] == [ISSUER]
        assert metadata["resource"] == f"http://127.0.0.1:{proxy.port}/mcp"
