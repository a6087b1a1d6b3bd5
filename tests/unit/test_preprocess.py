import pytest

from deployments.preprocess import Preprocessor, VariantLimits
from serve_app.errors import ContextLengthExceeded, InvalidRequest
from serve_app.protocol import ChatCompletionRequest, CompletionRequest


@pytest.fixture
def pre(two_variant_config, fake_tokenizer):
    return Preprocessor(
        two_variant_config,
        tokenizers={"v1": fake_tokenizer, "v2": fake_tokenizer},
        limits={"v1": VariantLimits(64), "v2": VariantLimits(128)},
    )


def chat(content="hi", **kw):
    return ChatCompletionRequest(model="tiny", messages=[{"role": "user", "content": content}], **kw)


def test_chat_applies_template_and_defaults(pre, fake_tokenizer):
    prepared = pre.prepare_chat("r1", "v1", chat(temperature=0.0, stop=["\n"], seed=3))
    assert prepared.prompt_token_ids == fake_tokenizer.encode("<user>hi\n<assistant>")
    assert prepared.variant == "v1" and prepared.kind == "chat" and prepared.request_id == "r1"
    assert prepared.sampling.max_tokens == 20  # the configured chat default, within room
    assert prepared.sampling.temperature == 0.0
    assert prepared.sampling.stop == ("\n",)
    assert prepared.sampling.seed == 3


def test_default_max_tokens_is_capped_by_the_room_left(pre):
    prompt_tokens = len("<user>\n<assistant>")
    prepared = pre.prepare_chat("r", "v1", chat("x" * (60 - prompt_tokens)))
    assert prepared.sampling.max_tokens == 4


def test_completion_uses_its_own_default(pre):
    prepared = pre.prepare_completion("r", "v2", CompletionRequest(model="tiny", prompt="abc"))
    assert prepared.prompt_token_ids == [97, 98, 99]
    assert prepared.sampling.max_tokens == 16


def test_prompt_longer_than_context(pre):
    with pytest.raises(ContextLengthExceeded) as info:
        pre.prepare_chat("r", "v1", chat("x" * 100))
    assert info.value.param == "messages"
    assert info.value.status_code == 400
    assert "64" in info.value.message


def test_max_tokens_beyond_context(pre):
    with pytest.raises(ContextLengthExceeded) as info:
        pre.prepare_completion("r", "v1", CompletionRequest(model="tiny", prompt="abc", max_tokens=62))
    assert info.value.param == "max_tokens"
    ok = pre.prepare_completion("r", "v1", CompletionRequest(model="tiny", prompt="abc", max_tokens=61))
    assert ok.sampling.max_tokens == 61


def test_context_depends_on_the_variant(pre):
    request = CompletionRequest(model="tiny", prompt="x" * 100)
    with pytest.raises(ContextLengthExceeded):
        pre.prepare_completion("r", "v1", request)
    assert pre.prepare_completion("r", "v2", request).prompt_tokens == 100


def test_empty_prompt_and_unsupported_fields(pre):
    with pytest.raises(InvalidRequest, match="empty") as info:
        pre.prepare_completion("r", "v1", CompletionRequest(model="tiny", prompt=""))
    assert info.value.param == "prompt"
    with pytest.raises(InvalidRequest, match="logprobs"):
        pre.prepare_chat(
            "r",
            "v1",
            ChatCompletionRequest.model_validate(
                {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "logprobs": True}
            ),
        )


def test_unknown_variant(pre):
    with pytest.raises(InvalidRequest, match="unknown variant"):
        pre.prepare_chat("r", "v9", chat())


def test_in_process_stage_prepares_each_kind_as_the_deployment_would(pre):
    import asyncio

    from serve_app.stages import InProcessPreprocess

    stage = InProcessPreprocess(pre)
    chat_request = chat("hi")
    assert asyncio.run(stage.prepare("chat", "r1", "v1", chat_request)) == pre.prepare_chat("r1", "v1", chat_request)
    completion = CompletionRequest(model="tiny", prompt="abc")
    prepared = asyncio.run(stage.prepare("completion", "r2", "v2", completion))
    assert prepared == pre.prepare_completion("r2", "v2", completion) and prepared.kind == "completion"
    # The errors are the deployment's too (a 400 naming the field), not wrapped.
    with pytest.raises(ContextLengthExceeded):
        asyncio.run(stage.prepare("chat", "r3", "v1", chat("x" * 100)))
