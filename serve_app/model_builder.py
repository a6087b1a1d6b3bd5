"""Build the project's own small causal LMs, offline and bit-for-bit deterministically.

No model hub is reachable here, so the A/B pair that vLLM serves is made locally: a byte-level BPE tokenizer
trained on Python's own standard-library sources, and two Llama-style models (``tiny-v1``, ``tiny-v2``) with
seeded random weights, saved in Hugging Face format. The weights are noise, but noise with a fixed seed: the
same spec always gives the same bytes, so vLLM's greedy output can be checked token for token against
``transformers``.

Each model folder carries a manifest (``servefleet_build.json``) with the spec it was built from and the
sha256 of every file. A build is skipped when the manifest matches the current spec, and redone when the
spec (or ``SPEC_VERSION``, the version of this recipe) changes.

torch, transformers and tokenizers are imported inside the functions that need them, so importing this module
(for ``builtin_model_path``, ``is_built`` or the CLI's ``--help``) stays cheap.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve_app.paths import models_dir

__all__ = [
    "BUILTIN_MODELS",
    "MANIFEST_NAME",
    "SPEC_VERSION",
    "TOKENIZER_SPEC",
    "ModelSpec",
    "TokenizerSpec",
    "build_all",
    "build_model",
    "builtin_model_path",
    "is_built",
    "read_manifest",
]

logger = logging.getLogger(__name__)

# Bump when the build recipe changes what it writes for an unchanged spec (init scheme, corpus selection,
# file layout): every existing build then stops matching and is rebuilt on next use.
SPEC_VERSION = 1

MANIFEST_NAME = "servefleet_build.json"
TOKENIZER_DIRNAME = "_tokenizer"

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

# ChatML, the same shape Qwen and many others use. Plain string content only: vLLM inspects the template
# and, seeing no loop over content parts, flattens OpenAI multi-part content into a string for it.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Folders of the standard library left out of the training text: installed third-party packages (they
# differ from machine to machine), the test suites (huge, full of deliberately odd encodings) and byte caches.
_CORPUS_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})

_LOCK_NAME = ".build.lock"
_PARTIAL_SUFFIX = ".partial"
_STALE_SUFFIX = ".stale"


class TokenizerSpec(BaseModel):
    """How the shared byte-level BPE tokenizer is trained."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: int = Field(4096, description="Final vocabulary size, special tokens and 256 byte symbols included.")
    corpus_max_bytes: int = Field(
        8_000_000, description="UTF-8 bytes of stdlib source to train on (whole files, sorted path order)."
    )
    min_frequency: int = Field(2, description="A pair must occur this often to be merged.")
    special_tokens: tuple[str, ...] = Field(
        (ENDOFTEXT, IM_START, IM_END), description="Added first, so they get ids 0, 1, 2 in this order."
    )
    bos_token: str = Field(ENDOFTEXT, description="Beginning-of-sequence token (never added automatically).")
    eos_token: str = Field(IM_END, description="End of a ChatML turn; what generation stops on.")
    pad_token: str = Field(ENDOFTEXT, description="Padding token for batched transformers runs.")
    model_max_length: int = Field(1024, description="Longest sequence the tokenizer reports as supported.")
    chat_template: str = Field(CHATML_TEMPLATE, description="Jinja chat template stored in tokenizer_config.json.")

    @model_validator(mode="after")
    def _special_tokens_known(self) -> TokenizerSpec:
        for token in (self.bos_token, self.eos_token, self.pad_token):
            if token not in self.special_tokens:
                raise ValueError(f"{token!r} must be one of special_tokens {self.special_tokens}")
        return self


class ModelSpec(BaseModel):
    """The shape and seed of one built-in Llama-style model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Variant name; also the folder name under the models directory.")
    description: str = Field("", description="One line for humans (CLI listings, /v1/models).")
    seed: int = Field(description="Seed for the weights; different per model so outputs differ.")
    num_hidden_layers: int = Field(gt=0, description="Decoder layers.")
    hidden_size: int = Field(gt=0, description="Width of the residual stream.")
    intermediate_size: int = Field(gt=0, description="Width of the SwiGLU MLP.")
    num_attention_heads: int = Field(gt=0, description="Query heads.")
    num_key_value_heads: int = Field(gt=0, description="Key/value heads (equal to query heads: plain MHA).")
    head_dim: int = Field(64, description="Per-head width; 64 is a size vLLM's CPU attention supports.")
    max_position_embeddings: int = Field(1024, gt=0, description="Longest context the model accepts.")
    rms_norm_eps: float = Field(1e-5, gt=0, description="RMSNorm epsilon.")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base.")
    init_std: float = Field(
        0.1,
        gt=0,
        description=(
            "Std of the normal init of every matrix. Larger than the usual 0.02 on purpose: at 0.02 the residual "
            "stream is dominated by the current token's embedding and greedy decoding falls into 1-3 token loops."
        ),
    )
    dtype: Literal["float32"] = Field("float32", description="Stored weight dtype.")

    @model_validator(mode="after")
    def _heads_fit(self) -> ModelSpec:
        if self.num_attention_heads * self.head_dim != self.hidden_size:
            raise ValueError("num_attention_heads * head_dim must equal hidden_size")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        return self


TOKENIZER_SPEC = TokenizerSpec()

BUILTIN_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="tiny-v1",
            description="Llama-style, 4 layers x 256 wide, random weights (baseline of the A/B pair)",
            seed=1,
            num_hidden_layers=4,
            hidden_size=256,
            intermediate_size=688,
            num_attention_heads=4,
            num_key_value_heads=4,
        ),
        ModelSpec(
            name="tiny-v2",
            description="Llama-style, 8 layers x 384 wide, random weights (slower candidate of the A/B pair)",
            seed=2,
            num_hidden_layers=8,
            hidden_size=384,
            intermediate_size=1024,
            num_attention_heads=6,
            num_key_value_heads=6,
        ),
    )
}


# --------------------------------------------------------------------------------------------- public API


def builtin_model_path(name: str, dest_root: Path | None = None) -> Path:
    """The folder ``name`` is (or would be) built into, whether or not it exists yet."""
    _spec(name)
    return _root(dest_root) / name


def is_built(name: str, dest_root: Path | None = None) -> bool:
    """Whether ``name`` is built and its manifest matches the current spec.

    Cheap (a JSON read and a few ``stat`` calls, no hashing) so that callers may ask on every start.
    """
    spec = _spec(name)
    folder = _root(dest_root) / name
    return _manifest_matches(folder, _model_identity(spec))


def read_manifest(name: str, dest_root: Path | None = None) -> dict[str, Any] | None:
    """The build manifest of ``name`` (spec, file hashes, parameter count), or None when not built."""
    return _load_manifest(builtin_model_path(name, dest_root))


def build_model(name: str, dest_root: Path | None = None, *, force: bool = False) -> Path:
    """Build ``name`` unless an up-to-date build exists; return its folder.

    ``force=True`` trusts nothing cached: it retrains the shared tokenizer and rebuilds the model. Safe to call
    from several processes at once (one builds, the others wait and then find it built).
    """
    return _build_model(name, _root(dest_root), force_model=force, force_tokenizer=force)


def build_all(dest_root: Path | None = None, *, force: bool = False) -> dict[str, Path]:
    """Build every built-in model; with ``force``, the tokenizer is retrained once, not once per model."""
    root = _root(dest_root)
    if force:
        with _build_lock(root):
            _ensure_tokenizer(root, force=True)
    return {name: _build_model(name, root, force_model=force, force_tokenizer=False) for name in BUILTIN_MODELS}


# ------------------------------------------------------------------------------------------ orchestration


def _spec(name: str) -> ModelSpec:
    try:
        return BUILTIN_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown built-in model {name!r}; known: {sorted(BUILTIN_MODELS)}") from None


def _root(dest_root: Path | None) -> Path:
    # Resolved per call, not at import, so SERVEFLEET_CACHE set later (tests, CLI flags) still applies.
    return Path(dest_root) if dest_root is not None else models_dir()


def _tokenizer_identity() -> dict[str, Any]:
    return {"spec_version": SPEC_VERSION, "tokenizer_spec": TOKENIZER_SPEC.model_dump(mode="json")}


def _model_identity(spec: ModelSpec) -> dict[str, Any]:
    return {**_tokenizer_identity(), "spec": spec.model_dump(mode="json")}


def _build_model(name: str, root: Path, *, force_model: bool, force_tokenizer: bool) -> Path:
    spec = _spec(name)
    folder = root / name
    identity = _model_identity(spec)
    if not force_model and _manifest_matches(folder, identity):
        logger.debug("%s is up to date at %s", name, folder)
        return folder
    with _build_lock(root):
        # Another process may have finished the same build while this one waited for the lock.
        if not force_model and _manifest_matches(folder, identity):
            return folder
        tok_dir, tok_manifest = _ensure_tokenizer(root, force=force_tokenizer)
        started = time.perf_counter()
        with _staging(root, name) as staging:
            for file_name in tok_manifest["files"]:
                shutil.copyfile(tok_dir / file_name, staging / file_name)
            num_parameters = _write_weights(
                spec, tok_manifest["special_token_ids"], tok_manifest["suppressed_token_ids"], staging
            )
            elapsed = time.perf_counter() - started
            _write_manifest(
                staging,
                {
                    **identity,
                    "name": name,
                    "num_parameters": num_parameters,
                    "vocab_size": TOKENIZER_SPEC.vocab_size,
                    "special_token_ids": tok_manifest["special_token_ids"],
                    "suppressed_token_ids": tok_manifest["suppressed_token_ids"],
                    "corpus": tok_manifest["corpus"],
                    "build_seconds": round(elapsed, 3),
                },
            )
        logger.info("built %s (%d parameters) in %.1fs at %s", name, num_parameters, elapsed, folder)
    return folder


def _ensure_tokenizer(root: Path, *, force: bool) -> tuple[Path, dict[str, Any]]:
    """Train the shared tokenizer into ``root/_tokenizer`` unless a matching one is there. Caller holds the lock."""
    folder = root / TOKENIZER_DIRNAME
    identity = _tokenizer_identity()
    if not force and _manifest_matches(folder, identity):
        manifest = _load_manifest(folder)
        assert manifest is not None  # _manifest_matches just read it
        return folder, manifest
    started = time.perf_counter()
    with _staging(root, TOKENIZER_DIRNAME) as staging:
        info = _train_tokenizer(TOKENIZER_SPEC, staging)
        _write_manifest(staging, {**identity, **info, "build_seconds": round(time.perf_counter() - started, 3)})
    logger.info("trained tokenizer (%d tokens) in %.1fs", TOKENIZER_SPEC.vocab_size, time.perf_counter() - started)
    manifest = _load_manifest(folder)
    assert manifest is not None
    return folder, manifest


# ------------------------------------------------------------------------------- manifests and atomicity


def _load_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        with open(folder / MANIFEST_NAME, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _manifest_matches(folder: Path, identity: dict[str, Any]) -> bool:
    manifest = _load_manifest(folder)
    if manifest is None or any(manifest.get(key) != value for key, value in identity.items()):
        return False
    # Sizes, not hashes: hashing ~70 MB on every start would cost more than the 0.1 s budget. The manifest is
    # written last and folders are renamed into place whole, so a size mismatch means someone edited files.
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for file_name, entry in files.items():
        try:
            if (folder / file_name).stat().st_size != entry["size"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return True


def _write_manifest(folder: Path, fields: dict[str, Any]) -> None:
    files = {
        path.name: {"sha256": _sha256(path), "size": path.stat().st_size}
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != MANIFEST_NAME
    }
    manifest = {
        **fields,
        "files": files,
        # For the record only (not compared): weights come from numpy, so they should not depend on these.
        "built_with": _library_versions(),
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for module_name in ("numpy", "torch", "transformers", "tokenizers"):
        module = sys.modules.get(module_name)
        if module is not None:
            versions[module_name] = str(getattr(module, "__version__", "?"))
    return versions


@contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    """One builder per models folder at a time, across processes (engine replicas may start together)."""
    root.mkdir(parents=True, exist_ok=True)
    # "a" never truncates, so a second opener cannot disturb the holder.
    with open(root / _LOCK_NAME, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            _remove_leftovers(root)
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _remove_leftovers(root: Path) -> None:
    # Under the lock no other builder is running, so any staging or replaced folder is a crashed build's.
    for path in root.iterdir():
        if path.name.startswith(".") and path.name.endswith((_PARTIAL_SUFFIX, _STALE_SUFFIX)):
            logger.warning("removing leftover %s from an interrupted build", path)
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _staging(root: Path, name: str) -> Iterator[Path]:
    """Yield an empty folder beside ``root/name``; on success it replaces ``root/name`` by rename.

    A crash at any point leaves either the previous complete folder or no folder, never a half-written one
    under the real name (and the manifest, written last, is what makes a folder count as built).
    """
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=_PARTIAL_SUFFIX, dir=root))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # mkdtemp makes the folder owner-only, and safetensors writes its file 0600; a model folder should be as
    # readable as anything else the project writes (an engine may run as another user).
    staging.chmod(0o755)
    for path in staging.iterdir():
        path.chmod(0o644)
    final = root / name
    if final.exists():
        # A directory cannot be renamed over a non-empty one, so move the old one aside first; readers that
        # already opened its files (a running engine) keep them.
        stale = root / f".{name}.{os.getpid()}{_STALE_SUFFIX}"
        os.rename(final, stale)
        os.rename(staging, final)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.rename(staging, final)


# -------------------------------------------------------------------------------------------- tokenizer


def _stdlib_corpus(max_bytes: int) -> tuple[list[str], dict[str, Any]]:
    """The training text: whole stdlib ``.py`` files in sorted relative-path order, up to ``max_bytes``.

    Sorted paths and a fixed byte budget make the text, and so the tokenizer, a function of the Python
    version alone; the sha256 in the manifest shows whether two machines trained on the same text.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    relative: list[str] = []
    for dirpath, dirnames, filenames in os.walk(stdlib):
        # "config-3.x-<platform>" holds the build's Makefile and python-config.py: machine-specific.
        dirnames[:] = [d for d in dirnames if d not in _CORPUS_SKIP_DIRS and not d.startswith("config-")]
        base = Path(dirpath).relative_to(stdlib)
        relative.extend(
            (base / f).as_posix()
            for f in filenames
            # _sysconfigdata_*.py records this interpreter's build paths and flags: machine-specific too.
            if f.endswith(".py") and not f.startswith("_sysconfigdata")
        )
    relative.sort()
    texts: list[str] = []
    total = 0
    digest = hashlib.sha256()
    for rel in relative:
        # A few stdlib files are not UTF-8 on purpose; "replace" keeps the result deterministic.
        text = (stdlib / rel).read_bytes().decode("utf-8", errors="replace")
        encoded = text.encode("utf-8")
        if total + len(encoded) > max_bytes:
            break
        texts.append(text)
        total += len(encoded)
        digest.update(rel.encode("utf-8") + b"\0" + encoded + b"\0")
    if not texts:
        raise RuntimeError(f"no Python sources found under {stdlib} to train the tokenizer on")
    info = {
        "source": "python-stdlib",
        "python": sys.version.split()[0],
        "files": len(texts),
        "bytes": total,
        "last_file": relative[len(texts) - 1],
        "sha256": digest.hexdigest(),
    }
    return texts, info


def _train_tokenizer(spec: TokenizerSpec, out_dir: Path) -> dict[str, Any]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts, corpus = _stdlib_corpus(spec.corpus_max_bytes)
    logger.info("training tokenizer on %d stdlib files (%d bytes)", corpus["files"], corpus["bytes"])

    # GPT-2 style byte level: every byte has a symbol, so any Unicode text round-trips and nothing is <unk>.
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=spec.min_frequency,
        special_tokens=list(spec.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Deterministic despite the Rust trainer's threads: counts are exact and merge ties break on token ids.
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    if tokenizer.get_vocab_size() != spec.vocab_size:
        raise RuntimeError(
            f"tokenizer came out with {tokenizer.get_vocab_size()} tokens, expected {spec.vocab_size}: "
            "raise corpus_max_bytes"
        )
    special_token_ids = {
        "bos_token_id": tokenizer.token_to_id(spec.bos_token),
        "eos_token_id": tokenizer.token_to_id(spec.eos_token),
        "pad_token_id": tokenizer.token_to_id(spec.pad_token),
    }
    special_ids = {tokenizer.token_to_id(token) for token in spec.special_tokens}
    # Tokens a random model should not pick greedily: the special ones (an early stop or stray markup by
    # chance) and byte pieces that are not whole printable UTF-8 on their own (a lone 0x80-0xFF byte, control
    # characters). Without them greedy text always decodes cleanly, so streamed and whole text agree.
    suppressed = sorted(
        i for i in range(tokenizer.get_vocab_size()) if i in special_ids or not _is_clean_text(tokenizer.decode([i]))
    )

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=spec.bos_token,
        eos_token=spec.eos_token,
        pad_token=spec.pad_token,
        unk_token=spec.bos_token,
        chat_template=spec.chat_template,
        model_max_length=spec.model_max_length,
        clean_up_tokenization_spaces=False,
    )
    # save_jinja_files=False keeps the template inside tokenizer_config.json, where every reader looks
    # (transformers 5 would otherwise write chat_template.jinja, which older readers ignore).
    fast.save_pretrained(str(out_dir), save_jinja_files=False)
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    # transformers 5 names the class "TokenizersBackend", unknown to transformers 4; both resolve
    # "PreTrainedTokenizerFast" to a tokenizer backed by tokenizer.json.
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return {"special_token_ids": special_token_ids, "suppressed_token_ids": suppressed, "corpus": corpus}


def _is_clean_text(text: str) -> bool:
    # U+FFFD is what the byte-level decoder makes of an incomplete UTF-8 sequence.
    return bool(text) and all(ch in "\n\t" or (ch.isprintable() and ch != "\ufffd") for ch in text)


# ---------------------------------------------------------------------------------------------- weights


def _param_init(seed: int, param_name: str, shape: tuple[int, ...], std: float) -> Any:
    """Normal(0, std) values for one parameter, from a generator seeded by (model seed, parameter name).

    numpy rather than torch's RNG: torch's normal_ takes a vectorised path whose last bits can differ
    between CPUs, and HF's init scheme changes between transformers releases; numpy's PCG64 stream does
    neither. Keying on the name means adding a layer leaves the other layers' weights unchanged.
    """
    import numpy as np

    name_key = int.from_bytes(hashlib.sha256(param_name.encode("utf-8")).digest()[:8], "little")
    rng = np.random.default_rng([seed, name_key])
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)


def _write_weights(
    spec: ModelSpec, special_token_ids: dict[str, int], suppressed_token_ids: list[int], out_dir: Path
) -> int:
    """Write config.json, generation_config.json and model.safetensors; return the parameter count."""
    import numpy as np
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    token_ids = dict(special_token_ids)
    config = LlamaConfig(
        vocab_size=TOKENIZER_SPEC.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        rms_norm_eps=spec.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
        initializer_range=spec.init_std,
        tie_word_embeddings=False,
        dtype=spec.dtype,
        **token_ids,
    )
    torch.manual_seed(spec.seed)
    with torch.no_grad():
        model = LlamaForCausalLM(config).to(torch.float32).eval()
        for param_name, param in model.named_parameters():
            if param_name.endswith("norm.weight"):
                param.fill_(1.0)  # RMSNorm gains start at one, as in any Llama init
            else:
                values = _param_init(spec.seed, param_name, tuple(param.shape), spec.init_std)
                param.copy_(torch.from_numpy(np.ascontiguousarray(values)))
        # Zero the output rows of the suppressed tokens: their logit is then exactly 0 while the best of
        # ~4000 random logits is several std above it, so greedy decoding never stops by chance (load tests
        # get max_tokens every time) and never emits broken UTF-8. Sampling can still pick them, rarely.
        model.lm_head.weight[suppressed_token_ids] = 0.0
    model.generation_config = GenerationConfig(**token_ids)
    model.save_pretrained(str(out_dir))
    if not (out_dir / "model.safetensors").is_file():
        # A single safetensors file is what the manifest and the determinism tests expect; sharding or a
        # .bin fallback in some other transformers release should fail loudly here, not later in vLLM.
        raise RuntimeError(f"transformers did not write {out_dir / 'model.safetensors'}")
    return sum(p.numel() for p in model.parameters())
