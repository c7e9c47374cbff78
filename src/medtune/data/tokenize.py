"""One example = prompt (question + separator, or the chat template's user turn) + answer + EOS.

Labels are not stored: an example is its token ids and the index where the answer starts.
Which positions are scored is derived from (length, answer_start) when a batch is built
(data/batching.py), so padding can never be scored and the EOS always is, whatever the pad
token id (SmolLM2's pad token *is* its EOS).
"""

from __future__ import annotations

from dataclasses import dataclass

from medtune.config.sections import FormatConfig
from medtune.data.sources import Record


@dataclass
class Example:
    id: str
    input_ids: list[int]
    answer_start: int  # index of the first answer token in input_ids
    truncated: bool

    def __len__(self) -> int:
        return len(self.input_ids)


def prompt_text(tokenizer, question: str, fmt: FormatConfig) -> str:
    if fmt.template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            from medtune.infra.errors import MedtuneError

            raise MedtuneError("format.template=chat but the tokenizer has no chat template; use format.template=plain")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
    return question + fmt.separator


def eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        from medtune.infra.errors import MedtuneError

        raise MedtuneError("the tokenizer has no EOS token; medtune needs one to end answers")
    return tokenizer.eos_token_id


def encode_records(tokenizer, records: list[Record], fmt: FormatConfig) -> list[Example]:
    """Tokenize prompt and answer separately (so answer_start is exact), then join and truncate."""
    prompts = [prompt_text(tokenizer, r.question, fmt) for r in records]
    # add_special_tokens for the prompt adds BOS where the model uses one; never inside the answer.
    p_ids = tokenizer(prompts, add_special_tokens=fmt.template != "chat")["input_ids"] if prompts else []
    a_ids = tokenizer([r.answer for r in records], add_special_tokens=False)["input_ids"] if records else []
    eos = eos_id(tokenizer)
    out = []
    for r, p, a in zip(records, p_ids, a_ids):
        ids = list(p) + list(a) + [eos]
        truncated = len(ids) > fmt.max_length
        out.append(
            Example(
                id=r.id, input_ids=ids[: fmt.max_length], answer_start=min(len(p), fmt.max_length), truncated=truncated
            )
        )
    return out
