"""Turning a problem into the token ids the policy sees."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

DEFAULT_SOLUTION_TEMPLATE = "{problem}\nPut the final answer in \\boxed{{}}."


def solution_prompt(
    problem_text: str, template: str = DEFAULT_SOLUTION_TEMPLATE, hints: list[str] | None = None
) -> str:
    text = template.format(problem=problem_text)
    if hints:
        text += "\nConcepts that may help: " + ", ".join(hints) + "."
    return text


def encode_user_message(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a one-turn chat ending where the assistant's answer begins.

    Models without a chat template (base models) get the plain text followed by a newline.
    """
    if tokenizer.chat_template:
        encoded = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
        )
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return list(ids)
    return tokenizer(text + "\n", add_special_tokens=True)["input_ids"]
