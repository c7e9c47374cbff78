"""`medtune export RUN --out DIR`: a run as one plain Hugging Face model folder.

A run keeps only what it trained (a PEFT adapter, or the trained tensors of selective / full
plus weights.json saying how they go back, e.g. on an untied head). Loading that by hand is
easy to get silently wrong: `load_state_dict(strict=False)` of an untied head on a tied base
writes the head into the input embeddings too. The export is the base with the run's weights
in place (adapters merged into the layers they adapt), its config (tie_word_embeddings false
where the head was untied), tokenizer and generation config: `AutoModelForCausalLM
.from_pretrained(DIR)` gives the run's logits, with no medtune or PEFT installed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, cast

from medtune.infra.errors import MedtuneError
from medtune.infra.faults import fault_point
from medtune.infra.writes import write_failed

CARD = """---
{base_model}library_name: transformers
tags: [medtune, medical-qa, {method}]
---
# {name}

{method} fine-tune of {base} made by medtune (`medtune export {run}`); the run's
config.yaml, trainable.json and summary.json are beside its weights in the run folder.
Adapters, when the method has them, are merged into the weights here.

Prompt as it trained: {prompt}. Greedy decoding up to EOS is how medtune scored its answers.

Trained on MedQuAD (Ben Abacha & Demner-Fushman, "A Question-Entailment Approach to Question
Answering", BMC Bioinformatics 2019; CC BY 4.0), unless the run's data says otherwise. The
base model's license applies to these weights.

**Not medical advice.** A small language model's answers can be wrong or harmful.
"""


def export_run(run_dir: Path, out: Path, force: bool = False, trust_remote_code: bool = False) -> Path:
    """Write `out` (created whole, through a hidden sibling renamed into place). Returns it."""
    from medtune.infra.jsonio import ensure_writable
    from medtune.training.inference import load_for_inference
    from medtune.training.run_folder import is_complete, load_config

    run_dir, out = Path(run_dir), Path(out).expanduser()
    _check_out(out, force)
    ensure_writable(out.parent, what="folder for --out")
    cfg, _ = load_config(run_dir)  # one line for a folder that is not a run, before weights load
    if not is_complete(run_dir):
        raise MedtuneError(f"run {run_dir} has not finished (no summary.json): resume it, then export it")
    model, tok, _, _ = load_for_inference(None, run_dir, device="cpu", trust_remote_code=trust_remote_code)
    model = cast(Any, model)  # a PreTrainedModel or a PeftModel
    if hasattr(model, "merge_and_unload"):  # a PeftModel: the adapter folded into its layers
        model = model.merge_and_unload()
    model.config.use_cache = True  # training switched it off; generation wants it
    prompt = (
        "the tokenizer's chat template, the question as the user turn (add_generation_prompt=True)"
        if cfg.format.template == "chat"
        else f"the question followed by {cfg.format.separator!r}, then the answer (no chat template)"
    )
    card = CARD.format(base_model=_hub_base(cfg.model.spec), base=f"`{cfg.model.spec}`", method=cfg.method,
                       name=out.name, run=run_dir, prompt=prompt)  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.export-*"):  # a killed export's (the lock-free writer's own)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.export-"))
        fault_point("write.export", tmp / "model.safetensors")
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        disk = write_failed(out, e, "nothing was written: free space and rerun")
        if disk is not None:  # safetensors' own error carries the errno only in its text
            raise disk from None
        if isinstance(e, OSError):
            raise MedtuneError(f"cannot write {out}: {e.strerror or e} (nothing was written)") from None
        raise
    return out


def _hub_base(spec: str) -> str:
    """The card's base_model metadata: a hub id only (an alias or a local path is not one)."""
    from medtune.models.loading import ALIASES, HUB_ALIASES

    hub = HUB_ALIASES.get(spec, spec)
    packaged = spec in ALIASES and spec not in HUB_ALIASES  # a name for a hub id is that id
    local = packaged or Path(spec).expanduser().exists() or spec.startswith((".", "/", "~"))
    return "" if local or hub.count("/") != 1 else f"base_model: {hub}\n"


def _check_out(out: Path, force: bool) -> None:
    """Write a new or empty folder; replace (--force) only an earlier export, never other files."""
    if not out.exists():
        return
    if not out.is_dir():
        raise MedtuneError(f"--out {out} is a file, not a folder")
    if not any(out.iterdir()):
        return
    card = out / "README.md"
    ours = (out / "config.json").is_file() and card.is_file() and "made by medtune" in card.read_text(errors="replace")
    if not ours:
        raise MedtuneError(f"--out {out} is not empty and is not a medtune export; choose a new or empty folder")
    if not force:
        raise MedtuneError(f"--out {out} already holds an export; pass --force to replace it")
