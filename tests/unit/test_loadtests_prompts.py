import statistics

import pytest

from loadtests.prompts import (
    CONTEXT_LENGTH,
    LengthDistribution,
    PromptMix,
    chat_request_body,
    estimate_tokens,
    generate,
    make_prompt,
    make_shared_prefix_prompt,
    shared_prefix,
)


def test_same_seed_same_prompts_whatever_the_order():
    forward = generate(seed=3, count=50)
    assert forward == generate(seed=3, count=50)
    assert [make_prompt(3, i) for i in reversed(range(50))] == list(reversed(forward))
    assert generate(seed=3, count=10, start=40) == forward[40:]


def test_different_seeds_give_different_prompts():
    assert generate(seed=1, count=20) != generate(seed=2, count=20)


def test_prompt_lengths_are_right_skewed_around_the_median():
    mix = PromptMix()
    prompts = generate(seed=0, count=1000)
    words = [p.word_count for p in prompts]
    median = statistics.median(words)
    assert median == pytest.approx(mix.prompt_words.median, rel=0.15)
    assert statistics.mean(words) > median  # lognormal: a long right tail
    assert min(words) >= mix.prompt_words.minimum
    assert max(words) <= mix.prompt_words.maximum
    answers = [p.max_tokens for p in prompts]
    assert statistics.median(answers) == pytest.approx(mix.output_tokens.median, rel=0.15)
    assert len(set(answers)) > 50


def test_every_prompt_fits_well_inside_the_context():
    for prompt in generate(seed=0, count=500) + generate(seed=0, count=200, shared=True):
        assert prompt.estimated_prompt_tokens + prompt.max_tokens <= CONTEXT_LENGTH * 0.75
        assert prompt.max_tokens >= 8


def test_fitting_trims_a_prompt_that_would_overflow_the_budget():
    long = LengthDistribution(median=2000, sigma=0.0, minimum=2000, maximum=2000)
    prompt = make_prompt(0, 0, PromptMix(prompt_words=long, token_budget=400))
    assert prompt.estimated_prompt_tokens + prompt.max_tokens <= 400
    assert prompt.word_count < 2000


def test_token_estimate_is_pessimistic_at_three_characters_a_token():
    assert estimate_tokens((("user", "x" * 300),)) == 100 + 8


def test_shared_prefix_prompts_share_one_long_system_prompt():
    prompts = generate(seed=4, count=30, shared=True)
    systems = {p.messages[0] for p in prompts}
    assert systems == {("system", shared_prefix(4))}
    assert len(shared_prefix(4).split()) > 150
    questions = [p.messages[1][1] for p in prompts]
    assert len(set(questions)) > 20
    assert statistics.median(len(q.split()) for q in questions) < 40
    assert shared_prefix(4) != shared_prefix(5)
    assert make_shared_prefix_prompt(4, 7) == prompts[7]


def test_request_body_streams_with_usage():
    prompt = make_prompt(0, 0)
    body = chat_request_body(prompt, model="tiny")
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": prompt.messages[0][1]}]
    assert body["max_tokens"] == prompt.max_tokens
    assert isinstance(body["seed"], int) and isinstance(body["temperature"], float)


def test_length_distribution_validates_its_parameters():
    with pytest.raises(ValueError):
        LengthDistribution(median=5, sigma=0.5, minimum=10, maximum=20)
