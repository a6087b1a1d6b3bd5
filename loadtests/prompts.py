"""Seeded prompt workloads: chat messages with realistic length distributions, and a shared-prefix variant.

Pure and deterministic: prompt ``i`` of seed ``s`` is the same on every machine and in every run, whatever order
the prompts are asked for in, because each prompt draws from its own ``random.Random(f"{s}:{i}")`` (string seeds
are hashed with SHA-512 by ``random``, so this is stable across Python versions). That is what lets the release
gate replay "the same load" against a baseline and a candidate.

Lengths follow lognormal distributions in words, clipped: real prompt and answer lengths are right-skewed (many
short, a few long). Every prompt is then fitted into a token budget well under the model's context length, using
a deliberately pessimistic estimate of 3 characters per token.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

CONTEXT_LENGTH = 1024
CHARS_PER_TOKEN = 3
"""English and Python run 3-4 characters a token; 3 over-counts tokens, which keeps prompts inside the context."""
TEMPLATE_TOKENS_PER_MESSAGE = 8
"""Chat-template markers around each message (role tags, separators); generous for ChatML-style templates."""
MIN_MAX_TOKENS = 8

_PROSE_TEXT = """
the request queue latency token batch model server replica cluster cache prefix engine user session stream
chunk budget window scheduler memory tensor kernel thread worker pool router variant canary rollout weight
metric histogram percentile throughput deadline retry timeout backoff error status health config deploy
function class method return value list dict string integer float parse validate format encode decode
file path folder read write append open close lock event signal callback future promise async await yield
data record field column table index query join filter group order limit offset schema migration
customer order invoice payment refund account address shipping product price discount coupon review
weather morning evening river mountain garden library museum journey recipe kitchen travel music story
"""

_CODE_TEXT = """
def return import from self None True False async await yield lambda for while if else elif try except
finally with as class raise assert len range enumerate zip dict list set tuple print sorted
"""

# Word pools for generated text: prose about serving, commerce and everyday topics, and Python-ish tokens.
_WORDS = tuple(_PROSE_TEXT.split())
_CODE_WORDS = tuple(_CODE_TEXT.split())

_INSTRUCTIONS = (
    "Summarize the following notes in three sentences:",
    "Explain what this code does and point out any bug:",
    "Rewrite the text below in a friendlier tone:",
    "Answer the question using the context given:",
    "Translate the following paragraph into plain English:",
    "List the key steps described here:",
    "Write a short reply to this customer message:",
    "Suggest a better name for each function mentioned:",
)

_QUESTIONS = (
    "How do I reset my password?",
    "Can I change the shipping address of an order that has already shipped?",
    "Why was my card charged twice?",
    "What is your refund policy for digital products?",
    "How long does delivery take to another country?",
    "Can you explain the difference between the two plans?",
    "My discount code does not work, what should I do?",
    "Where can I download my invoices?",
)


@dataclass(frozen=True, slots=True)
class LengthDistribution:
    """A lognormal length with the given median, clipped to ``[minimum, maximum]``."""

    median: float
    sigma: float
    minimum: int
    maximum: int

    def __post_init__(self) -> None:
        if not (0 < self.minimum <= self.median <= self.maximum and self.sigma >= 0):
            raise ValueError(f"need 0 < minimum <= median <= maximum and sigma >= 0, got {self}")

    def sample(self, rng: random.Random) -> int:
        value = rng.lognormvariate(math.log(self.median), self.sigma)
        return int(min(self.maximum, max(self.minimum, round(value))))


@dataclass(frozen=True, slots=True)
class PromptMix:
    """How long prompts and answers are. Defaults fit a 1024-token context with room to spare."""

    prompt_words: LengthDistribution = LengthDistribution(median=60, sigma=0.8, minimum=5, maximum=220)
    output_tokens: LengthDistribution = LengthDistribution(median=64, sigma=0.7, minimum=8, maximum=256)
    code_fraction: float = 0.25
    """Share of prompts whose context reads like Python rather than prose."""
    temperature: float = 0.7
    token_budget: int = int(CONTEXT_LENGTH * 0.75)
    """Estimated prompt tokens plus ``max_tokens`` never exceed this."""


@dataclass(frozen=True, slots=True)
class Prompt:
    """One request's worth of workload: chat messages and the answer length to ask for."""

    index: int
    messages: tuple[tuple[str, str], ...]
    """``(role, content)`` pairs; tuples keep the prompt hashable and immutable."""
    max_tokens: int
    temperature: float
    seed: int
    """Sent as the request's sampling seed, so both variants sample with the same seed for the same prompt."""

    def as_messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    @property
    def estimated_prompt_tokens(self) -> int:
        return estimate_tokens(self.messages)

    @property
    def word_count(self) -> int:
        return sum(len(content.split()) for _, content in self.messages)


def estimate_tokens(messages: tuple[tuple[str, str], ...]) -> int:
    """A pessimistic token count: 3 characters a token plus the template's markers per message."""
    return sum(math.ceil(len(content) / CHARS_PER_TOKEN) + TEMPLATE_TOKENS_PER_MESSAGE for _, content in messages)


def _rng(seed: int, index: int, stream: str) -> random.Random:
    return random.Random(f"{stream}:{seed}:{index}")


def _sentences(rng: random.Random, words: int, vocabulary: tuple[str, ...]) -> str:
    """``words`` words from ``vocabulary`` grouped into sentences of 6-16 words."""
    out: list[str] = []
    remaining = words
    while remaining > 0:
        length = min(remaining, rng.randint(6, 16))
        sentence = [rng.choice(vocabulary) for _ in range(length)]
        sentence[0] = sentence[0].capitalize()
        out.append(" ".join(sentence) + ".")
        remaining -= length
    return " ".join(out)


def _fit(messages: list[tuple[str, str]], wanted_tokens: int, budget: int) -> tuple[tuple[tuple[str, str], ...], int]:
    """Trim the last message's words, then ``max_tokens``, until estimate + answer fit the budget."""
    fitted = tuple(messages)
    while estimate_tokens(fitted) + MIN_MAX_TOKENS > budget:
        role, content = fitted[-1]
        words = content.split()
        if len(words) <= 1:
            raise ValueError(f"the fixed part of the prompt alone exceeds the token budget of {budget}")
        fitted = (*fitted[:-1], (role, " ".join(words[: max(1, len(words) * 3 // 4)])))
    return fitted, max(MIN_MAX_TOKENS, min(wanted_tokens, budget - estimate_tokens(fitted)))


def make_prompt(seed: int, index: int, mix: PromptMix = PromptMix()) -> Prompt:
    """Prompt ``index`` of the seeded general chat workload: an instruction followed by prose or code."""
    rng = _rng(seed, index, "chat")
    words = mix.prompt_words.sample(rng)
    instruction = rng.choice(_INSTRUCTIONS)
    vocabulary = _CODE_WORDS + _WORDS[:40] if rng.random() < mix.code_fraction else _WORDS
    body = _sentences(rng, max(1, words - len(instruction.split())), vocabulary)
    messages, max_tokens = _fit([("user", f"{instruction}\n\n{body}")], mix.output_tokens.sample(rng), mix.token_budget)
    return Prompt(index, messages, max_tokens, mix.temperature, seed=rng.randrange(2**31))


@dataclass(frozen=True, slots=True)
class SharedPrefixMix:
    """A long system prompt shared by every request, then a short user question: the prefix-caching case."""

    prefix_words: int = 180
    question_words: LengthDistribution = LengthDistribution(median=15, sigma=0.5, minimum=5, maximum=60)
    output_tokens: LengthDistribution = LengthDistribution(median=48, sigma=0.6, minimum=8, maximum=128)
    temperature: float = 0.7
    token_budget: int = int(CONTEXT_LENGTH * 0.75)


def shared_prefix(seed: int, mix: SharedPrefixMix = SharedPrefixMix()) -> str:
    """The system prompt every request of the workload starts with; depends on the seed only."""
    rng = _rng(seed, 0, "prefix")
    opening = "You are the support assistant of an online shop. Follow these policies exactly."
    return f"{opening}\n\n{_sentences(rng, mix.prefix_words, _WORDS)}"


def make_shared_prefix_prompt(seed: int, index: int, mix: SharedPrefixMix = SharedPrefixMix()) -> Prompt:
    """Prompt ``index`` of the shared-prefix workload: ``shared_prefix(seed)`` then a customer question."""
    rng = _rng(seed, index, "shared")
    question = rng.choice(_QUESTIONS)
    extra_words = max(0, mix.question_words.sample(rng) - len(question.split()))
    detail = f" {_sentences(rng, extra_words, _WORDS)}" if extra_words else ""
    messages, max_tokens = _fit(
        [("system", shared_prefix(seed, mix)), ("user", question + detail)],
        mix.output_tokens.sample(rng),
        mix.token_budget,
    )
    return Prompt(index, messages, max_tokens, mix.temperature, seed=rng.randrange(2**31))


def generate(seed: int, count: int, *, start: int = 0, shared: bool = False) -> list[Prompt]:
    """``count`` prompts of one workload from index ``start``: the same list for the same arguments."""
    make = make_shared_prefix_prompt if shared else make_prompt
    return [make(seed, i) for i in range(start, start + count)]


def chat_request_body(prompt: Prompt, *, model: str) -> dict[str, object]:
    """The streaming ``/v1/chat/completions`` body for ``prompt``, asking for the closing usage chunk."""
    return {
        "model": model,
        "messages": prompt.as_messages(),
        "max_tokens": prompt.max_tokens,
        "temperature": prompt.temperature,
        "seed": prompt.seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def plain_request_body(prompt: Prompt, *, model: str) -> dict[str, object]:
    """The same request as ``chat_request_body`` without streaming: one JSON answer."""
    body = chat_request_body(prompt, model=model)
    body.pop("stream_options")
    return {**body, "stream": False}


def is_streamed(seed: int, index: int, stream_fraction: float) -> bool:
    """Whether request ``index`` of a run streams: a seeded draw, so a run replays the same mix."""
    if stream_fraction >= 1:
        return True
    return _rng(seed, index, "stream").random() < stream_fraction
