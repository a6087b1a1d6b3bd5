"""Turn a variant's ``model`` reference into what vLLM and the tokenizer load."""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.config import VariantConfig


@dataclass(frozen=True, slots=True)
class ModelSource:
    model: str
    tokenizer: str


def resolve_model(variant: VariantConfig, *, build: bool = False) -> ModelSource:
    """``builtin:NAME`` becomes the folder this project builds (built first if asked and missing);
    a path or hub id passes through unchanged for vLLM to load."""
    name = variant.builtin_name
    if name is None:
        return ModelSource(variant.model, variant.tokenizer or variant.model)
    from serve_app import model_builder

    if name not in model_builder.BUILTIN_MODELS:
        known = ", ".join(sorted(model_builder.BUILTIN_MODELS))
        raise ValueError(f"variant {variant.name}: unknown built-in model {name!r} (known: {known})")
    path = model_builder.build_model(name) if build else model_builder.builtin_model_path(name)
    return ModelSource(str(path), variant.tokenizer or str(path))
