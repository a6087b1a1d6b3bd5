"""Preprocess: chat template, tokenization, and the checks that need the tokenizer.

The rules (``plan_sampling``) are pure; ``Preprocessor`` adds the tokenizers. One replica serves every variant,
holding one tokenizer each, because tokenizing is cheap next to generation and a pool per variant would cost a
process per variant for nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from deployments.types import PreparedRequest, SamplingSpec
from serve_app.config import GenerationDefaults, ServeFleetConfig
from serve_app.drift import DriftMonitor
from serve_app.errors import ContextLengthExceeded, InvalidRequest
from serve_app.metrics import DriftMetrics, models_of
from serve_app.model_source import resolve_model
from serve_app.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class VariantLimits:
    max_model_len: int


def plan_sampling(
    request: SamplingFields, *, prompt_tokens: int, limits: VariantLimits, default_max_tokens: int, prompt_param: str
) -> SamplingSpec:
    """Check a request against the variant's context and turn its fields into a sampling spec."""
    unsupported = request.unsupported()
    if unsupported:
        raise InvalidRequest(f"'{unsupported}' is not supported by this server", param=unsupported)
    if prompt_tokens == 0:
        raise InvalidRequest("the prompt is empty", param=prompt_param)
    room = limits.max_model_len - prompt_tokens
    if room <= 0:
        raise ContextLengthExceeded(
            f"this model's maximum context length is {limits.max_model_len} tokens, "
            f"but the prompt has {prompt_tokens} tokens",
            param=prompt_param,
        )
    asked = request.requested_max_tokens()  # type: ignore[attr-defined]
    if asked is not None and asked > room:
        raise ContextLengthExceeded(
            f"this model's maximum context length is {limits.max_model_len} tokens; the prompt has "
            f"{prompt_tokens} tokens and max_tokens asks for {asked} more",
            param="max_completion_tokens" if getattr(request, "max_completion_tokens", None) else "max_tokens",
        )
    return SamplingSpec(
        max_tokens=asked if asked is not None else min(default_max_tokens, room),
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        stop=tuple(request.stop_list()),
        seed=request.seed,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
    )


Tokenizer = Any  # a transformers tokenizer; typed loosely to keep transformers out of import time


class Preprocessor:
    """Plain class; the builder makes it a deployment. Tests may pass tokenizers in directly."""

    def __init__(
        self,
        config: ServeFleetConfig,
        *,
        tokenizers: Mapping[str, Tokenizer] | None = None,
        limits: Mapping[str, VariantLimits] | None = None,
    ) -> None:
        self._defaults: GenerationDefaults = config.defaults
        self._tokenizers = dict(tokenizers) if tokenizers is not None else _load_tokenizers(config)
        self._limits = dict(limits) if limits is not None else _load_limits(config)
        drift = config.drift
        self._drift = {
            v.name: DriftMonitor(
                reference_size=drift.reference_size,
                window_size=drift.window_size,
                min_current=min(drift.min_current, drift.window_size),
                report_every=drift.report_every,
            )
            for v in config.variants
        }
        self._drift_metrics = DriftMetrics(models_of(config))

    def _observe(self, variant: str, token_ids: list[int]) -> None:
        scores = self._drift[variant].observe(token_ids)
        if scores is not None:
            self._drift_metrics.set_scores(variant, scores)

    def _variant(self, variant: str) -> tuple[Tokenizer, VariantLimits]:
        try:
            return self._tokenizers[variant], self._limits[variant]
        except KeyError:
            raise InvalidRequest(f"unknown variant {variant!r}", param="model") from None

    def prepare_chat(self, request_id: str, variant: str, request: ChatCompletionRequest) -> PreparedRequest:
        tokenizer, limits = self._variant(variant)
        messages = [{"role": m.role, "content": m.text()} for m in request.messages]
        if getattr(tokenizer, "chat_template", None) is None:
            raise InvalidRequest(f"model {variant!r} has no chat template; use /v1/completions", param="model")
        token_ids = _as_ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
        sampling = plan_sampling(
            request,
            prompt_tokens=len(token_ids),
            limits=limits,
            default_max_tokens=self._defaults.max_tokens,
            prompt_param="messages",
        )
        self._observe(variant, token_ids)
        return PreparedRequest(request_id, variant, "chat", token_ids, sampling)

    def prepare_completion(self, request_id: str, variant: str, request: CompletionRequest) -> PreparedRequest:
        tokenizer, limits = self._variant(variant)
        token_ids = list(tokenizer.encode(request.prompt_text(), add_special_tokens=False))
        sampling = plan_sampling(
            request,
            prompt_tokens=len(token_ids),
            limits=limits,
            default_max_tokens=self._defaults.completion_max_tokens,
            prompt_param="prompt",
        )
        self._observe(variant, token_ids)
        return PreparedRequest(request_id, variant, "completion", token_ids, sampling)


def _as_ids(rendered: Any) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True); 4.x returned a list.
    if isinstance(rendered, Mapping) or hasattr(rendered, "input_ids"):
        rendered = rendered["input_ids"]
    return [int(t) for t in rendered]


def _load_tokenizers(
    config: ServeFleetConfig, loader: Callable[[str], Tokenizer] | None = None
) -> dict[str, Tokenizer]:
    from transformers import AutoTokenizer

    load = loader or AutoTokenizer.from_pretrained
    return {v.name: load(resolve_model(v, build=True).tokenizer) for v in config.variants}


def _load_limits(config: ServeFleetConfig) -> dict[str, VariantLimits]:
    from transformers import AutoConfig

    limits = {}
    for variant in config.variants:
        length = variant.engine.max_model_len
        if length is None:
            model_config = AutoConfig.from_pretrained(resolve_model(variant, build=True).model)
            length = int(model_config.max_position_embeddings)
        limits[variant.name] = VariantLimits(max_model_len=length)
    return limits
