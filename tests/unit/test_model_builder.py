"""The built-in model builder: real tokenizer training and real weights, written into temp folders.

Building both models once per session (a few seconds) keeps the file well under a minute on two cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from serve_app import model_builder
from serve_app.model_builder import BUILTIN_MODELS, MANIFEST_NAME, ModelSpec, build_all, build_model, is_built
from serve_app.paths import PROJECT_ROOT

slow = pytest.mark.slow

EXPECTED_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    MANIFEST_NAME,
}
# Files whose bytes must not depend on the process, run or folder that built them.
DETERMINISTIC_FILES = ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def built_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    paths = build_all(root)
    assert paths == {name: root / name for name in BUILTIN_MODELS}
    return root


@pytest.fixture(scope="session")
def loaded(built_root: Path) -> dict[str, tuple[Any, Any]]:
    """(tokenizer, model) per built model, loaded once with the Auto classes vLLM's own loader mirrors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return {
        name: (
            AutoTokenizer.from_pretrained(built_root / name),
            AutoModelForCausalLM.from_pretrained(built_root / name).eval(),
        )
        for name in BUILTIN_MODELS
    }


@pytest.fixture
def v1_root(built_root: Path, tmp_path: Path) -> Path:
    """A fresh models folder holding only tiny-v1; the session's tokenizer is copied in so it is not retrained."""
    shutil.copytree(built_root / model_builder.TOKENIZER_DIRNAME, tmp_path / model_builder.TOKENIZER_DIRNAME)
    build_model("tiny-v1", tmp_path)
    return tmp_path


# ------------------------------------------------------------------------------------------- fast checks


def test_importing_the_builder_does_not_import_torch() -> None:
    code = (
        "import sys, serve_app.model_builder\n"
        "heavy = {'torch', 'transformers', 'tokenizers', 'numpy'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True)


def test_unknown_name_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown built-in model 'nope'"):
        build_model("nope", tmp_path)
    with pytest.raises(ValueError, match="tiny-v1"):
        model_builder.builtin_model_path("nope", tmp_path)


def test_path_is_known_before_building(tmp_path: Path) -> None:
    assert model_builder.builtin_model_path("tiny-v2", tmp_path) == tmp_path / "tiny-v2"
    assert not is_built("tiny-v2", tmp_path)
    assert model_builder.read_manifest("tiny-v2", tmp_path) is None


def test_default_root_is_the_project_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVEFLEET_CACHE", str(tmp_path))
    assert model_builder.builtin_model_path("tiny-v1") == tmp_path.resolve() / "models" / "tiny-v1"


def test_spec_rejects_heads_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="head_dim"):
        ModelSpec(
            name="bad", seed=0, num_hidden_layers=1, hidden_size=200, intermediate_size=64,
            num_attention_heads=4, num_key_value_heads=4,
        )  # fmt: skip


def test_specs_are_the_documented_shapes() -> None:
    v1, v2 = BUILTIN_MODELS["tiny-v1"], BUILTIN_MODELS["tiny-v2"]
    assert (v1.num_hidden_layers, v1.hidden_size, v1.head_dim) == (4, 256, 64)
    assert (v2.num_hidden_layers, v2.hidden_size, v2.head_dim) == (8, 384, 64)
    assert v1.seed != v2.seed
    assert model_builder.TOKENIZER_SPEC.vocab_size == 4096


# --------------------------------------------------------------------------------------- built models


@slow
@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_build_writes_a_complete_hf_folder(built_root: Path, name: str) -> None:
    folder = built_root / name
    assert {p.name for p in folder.iterdir()} == EXPECTED_FILES
    assert is_built(name, built_root)
    manifest = model_builder.read_manifest(name, built_root)
    assert manifest is not None
    assert manifest["spec_version"] == model_builder.SPEC_VERSION
    assert manifest["spec"] == BUILTIN_MODELS[name].model_dump(mode="json")
    assert manifest["files"]["model.safetensors"]["sha256"] == sha256(folder / "model.safetensors")
    # No staging or replaced folders left beside the models.
    assert not [p for p in built_root.iterdir() if p.name.endswith((".partial", ".stale"))]


@slow
@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_config_matches_spec(built_root: Path, name: str) -> None:
    from transformers import AutoConfig

    spec = BUILTIN_MODELS[name]
    config = AutoConfig.from_pretrained(built_root / name)
    assert config.architectures == ["LlamaForCausalLM"]
    assert config.num_hidden_layers == spec.num_hidden_layers
    assert config.hidden_size == spec.hidden_size
    assert config.num_attention_heads == spec.num_attention_heads
    assert config.head_dim == 64
    assert config.vocab_size == 4096
    assert config.max_position_embeddings == 1024
    assert config.tie_word_embeddings is False
    generation = json.loads((built_root / name / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (0, 2, 0)


@slow
def test_models_load_in_float32_and_v2_is_bigger(loaded: dict[str, tuple[Any, Any]], built_root: Path) -> None:
    import torch

    counts = {}
    for name, (_, model) in loaded.items():
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        counts[name] = sum(p.numel() for p in model.parameters())
        assert model_builder.read_manifest(name, built_root)["num_parameters"] == counts[name]
    assert counts["tiny-v2"] > 2 * counts["tiny-v1"]


@slow
def test_both_models_share_one_tokenizer(built_root: Path) -> None:
    shared = built_root / model_builder.TOKENIZER_DIRNAME / "tokenizer.json"
    assert sha256(built_root / "tiny-v1" / "tokenizer.json") == sha256(shared)
    assert sha256(built_root / "tiny-v2" / "tokenizer.json") == sha256(shared)


@slow
def test_tokenizer_special_tokens(loaded: dict[str, tuple[Any, Any]]) -> None:
    tokenizer, _ = loaded["tiny-v1"]
    assert len(tokenizer) == 4096
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.bos_token == tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    # Each marker is one token, and it is dropped when decoding with skip_special_tokens.
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=True)
    assert ids[0] == 1 and ids[-1] == 2
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nhi"


@slow
def test_chat_template_renders_chatml(loaded: dict[str, tuple[Any, Any]]) -> None:
    tokenizer, _ = loaded["tiny-v2"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    conversation = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        conversation + "<|im_start|>assistant\n"
    )
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False) == conversation


@slow
@pytest.mark.parametrize(
    "text",
    [
        "plain ascii, def f(x): return x  # comment",
        "ünïcødé Ærøskøbing naïve café",
        "漢字とかなカナ 한국어 العربية עברית",
        "emoji 🙂👍🏽 family 👨‍👩‍👧 flag 🇳🇿",
        "combining e\u0301 zero\u200bwidth \x00nul \x7f del \r\n\ttabs   spaces",
        "fraktur \U0001d518\U0001d52b\U0001d526 astral \U0010fffd",
    ],
)
def test_tokenizer_round_trips_unicode(loaded: dict[str, tuple[Any, Any]], text: str) -> None:
    tokenizer, _ = loaded["tiny-v1"]
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert not set(ids) & {0, 1, 2}  # byte level: nothing falls back to a special token
    assert tokenizer.decode(ids) == text


@slow
def test_greedy_generation_is_varied_and_differs_between_models(loaded: dict[str, tuple[Any, Any]]) -> None:
    import torch

    outputs = {}
    for name, (tokenizer, model) in loaded.items():
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": "Tell me a story."}], tokenize=False, add_generation_prompt=True
        )
        inputs = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1] :].tolist()
        # Special tokens are suppressed for greedy decoding: no early stop, all 24 tokens come out.
        assert len(new) == 24
        assert len(set(new)) >= 8, f"{name} repeats itself: {new}"
        assert not set(new) & {0, 1, 2}
        text = tokenizer.decode(new)
        assert "\ufffd" not in text, f"{name} emitted broken UTF-8: {text!r}"
        outputs[name] = new
    assert outputs["tiny-v1"] != outputs["tiny-v2"]


# ------------------------------------------------------------------------------------ rebuild behaviour


@slow
def test_build_is_deterministic_across_processes(built_root: Path, tmp_path: Path) -> None:
    # A separate interpreter with another hash seed retrains the tokenizer and rebuilds tiny-v1 from nothing.
    code = "import sys; from pathlib import Path; from serve_app.model_builder import build_model; "
    code += "build_model('tiny-v1', Path(sys.argv[1]))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=PROJECT_ROOT, env=env, check=True)
    for file_name in DETERMINISTIC_FILES:
        assert sha256(tmp_path / "tiny-v1" / file_name) == sha256(built_root / "tiny-v1" / file_name), file_name


@slow
def test_up_to_date_build_is_skipped_and_force_rebuilds(v1_root: Path) -> None:
    folder = v1_root / "tiny-v1"
    weights_sha = sha256(folder / "model.safetensors")
    marker = folder / "marker"
    marker.touch()

    started = time.perf_counter()
    assert build_model("tiny-v1", v1_root) == folder
    assert time.perf_counter() - started < 0.1
    assert marker.exists(), "an up-to-date build was redone"

    assert build_model("tiny-v1", v1_root, force=True) == folder
    assert not marker.exists(), "force=True did not rebuild"
    assert sha256(folder / "model.safetensors") == weights_sha


@slow
def test_changed_spec_or_edited_file_rebuilds(v1_root: Path) -> None:
    folder = v1_root / "tiny-v1"
    manifest_path = folder / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["spec"]["num_hidden_layers"] = 2  # as if built from an older spec
    manifest_path.write_text(json.dumps(manifest))
    assert not is_built("tiny-v1", v1_root)
    build_model("tiny-v1", v1_root)
    assert is_built("tiny-v1", v1_root)

    with open(folder / "model.safetensors", "ab") as fh:  # a damaged or hand-edited weights file
        fh.write(b"\0")
    assert not is_built("tiny-v1", v1_root)


@slow
def test_crash_during_rebuild_keeps_the_previous_build(v1_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = v1_root / "tiny-v1"
    before = sha256(folder / "model.safetensors")

    def crash(*args: object) -> int:
        out_dir = args[-1]
        assert isinstance(out_dir, Path)
        (out_dir / "model.safetensors").write_bytes(b"half written")
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(model_builder, "_write_weights", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_model("tiny-v1", v1_root, force=True)
    assert is_built("tiny-v1", v1_root)
    assert sha256(folder / "model.safetensors") == before
    assert not [p for p in v1_root.iterdir() if p.name.endswith((".partial", ".stale"))]

    with pytest.raises(RuntimeError, match="simulated crash"):
        build_model("tiny-v2", v1_root)
    assert not (v1_root / "tiny-v2").exists()
