"""Shared fakes for unit tests. Each is named for what it is: a stand-in, never the real thing."""

from __future__ import annotations

import pytest

from serve_app.config import ServeFleetConfig, parse_config


class FakeCharTokenizer:
    """One token per character; a ChatML template. Enough to test preprocess rules without transformers."""

    chat_template = "chatml"

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]

    def apply_chat_template(self, messages, add_generation_prompt: bool, tokenize: bool):
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages)
        if add_generation_prompt:
            text += "<assistant>"
        return self.encode(text)


@pytest.fixture
def two_variant_config() -> ServeFleetConfig:
    return parse_config(
        {
            "variants": [
                {"name": "v1", "model": "/m/v1", "weight": 50, "engine": {"max_model_len": 64}},
                {"name": "v2", "model": "/m/v2", "weight": 50, "engine": {"max_model_len": 128}},
            ],
            "defaults": {"max_tokens": 20, "completion_max_tokens": 16},
        },
        environ={},
    )


@pytest.fixture
def fake_tokenizer() -> FakeCharTokenizer:
    return FakeCharTokenizer()
