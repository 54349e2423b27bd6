"""Every request of the hostile corpus (`e2llm.bench.hostile`: malformed JSON, loose types,
out-of-range values, unsupported parameters, bad prompts and models, wrong content types,
foreign Host headers, missing keys, oversized bodies, unknown routes) against a live
`e2llm serve` (`conftest.api_server`): each gets a 4xx OpenAI error body with nothing internal in
it, `/health` answers after each, and the server log shows no traceback.
"""

from __future__ import annotations

import pytest
from servekit import API_KEY, API_MODEL

from e2llm.bench.hostile import corpus, play, summary
from e2llm.bench.local_server import LocalServer

pytestmark = pytest.mark.slow


def test_hostile_requests_all_get_a_clean_4xx(api_server: LocalServer) -> None:
    outcomes = play(api_server.url, corpus(API_MODEL, API_KEY), API_KEY)
    bad = [(o.request.kind, o.request.name, o.status, o.body[:300]) for o in outcomes if not o.ok]
    print(f"hostile requests by kind: {summary(outcomes)}")
    assert not bad, bad
    assert len(outcomes) > 150
    log = api_server.log.read_text()
    assert "Traceback" not in log, log[-3000:]
