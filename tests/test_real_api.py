"""Opt-in smoke test against the real Anthropic API: `pytest -m real_api` with
ANTHROPIC_API_KEY set. Skipped without a key, and on a credit-balance error (an account
state, not a relay bug). Never run in CI."""

from __future__ import annotations

import os

import pytest

from relay.api import AnthropicApi
from relay.errors import ApiError

pytestmark = pytest.mark.real_api


def test_one_real_turn() -> None:
    key = os.environ.get("ANTHROPIC_API_KEY", "")
    if not key or key.startswith("sk-test"):
        pytest.skip("no real ANTHROPIC_API_KEY in the environment")
    api = AnthropicApi(key, os.environ.get("ANTHROPIC_BASE_URL"), 120)
    model = os.environ.get("RELAY_REAL_MODEL", "claude-haiku-4-5")
    try:
        reply = api.create(
            model=model,
            max_tokens=50,
            system=[
                {
                    "type": "text",
                    "text": "Answer in one word.",
                    "cache_control": {"type": "ephemeral"},
                }
            ],
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "[from session-1]\nSay: pong",
                            "cache_control": {"type": "ephemeral"},
                        }
                    ],
                }
            ],
        )
    except ApiError as exc:
        if "credit balance" in exc.message:
            pytest.skip(f"account has no credit: {exc.message}")
        raise
    assert "pong" in reply.text.lower()
    assert (
        reply.usage.input_tokens + reply.usage.cache_read_tokens + reply.usage.cache_write_tokens
        > 0
    )
    assert reply.usage.output_tokens > 0
    assert reply.request_id
