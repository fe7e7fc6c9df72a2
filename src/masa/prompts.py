"""Turning a problem into the token ids the policy sees."""

from __future__ import annotations

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from masa.config import Config, meta_prompt_style, task_has_notions
from masa.meta.prompt import SYSTEM_TURN, build_meta_prompt

DEFAULT_SOLUTION_TEMPLATE = "{problem}\nPut the final answer in \\boxed{{}}."


def solution_prompt(
    problem_text: str, template: str = DEFAULT_SOLUTION_TEMPLATE, hints: list[str] | None = None
) -> str:
    text = template.format(problem=problem_text)
    if hints:
        text += "\nConcepts that may help: " + ", ".join(hints) + "."
    return text


def encode_user_message(
    tokenizer: PreTrainedTokenizerBase, text: str, *, system_turn: bool = True
) -> list[int]:
    """Token ids of a one-turn chat ending where the assistant's answer begins.

    ``system_turn=False`` drops a system turn the chat template adds by itself (SmolLM2's is 20 tokens): the
    shorter of the chat without a system message and with an empty one, since a template either fills in
    its default when none is given or adds nothing. Models without a chat template (base models) get the
    plain text followed by a newline.
    """
    if not tokenizer.chat_template:
        return tokenizer(text + "\n", add_special_tokens=True)["input_ids"]
    user = {"role": "user", "content": text}
    ids = _chat_ids(tokenizer, [user])
    if system_turn:
        return ids
    try:
        with_empty_system = _chat_ids(tokenizer, [{"role": "system", "content": ""}, user])
    except TemplateError:  # a template that has no system role (Gemma's) says so by raising
        return ids
    return min(ids, with_empty_system, key=len)


def encode_meta_prompt(tokenizer: PreTrainedTokenizerBase, text: str, style: str) -> list[int]:
    """Token ids of a meta prompt (``build_meta_prompt``'s text) in the chat its style asks for: the terse
    style without the template's default system turn (``SYSTEM_TURN``)."""
    return encode_user_message(tokenizer, text, system_turn=SYSTEM_TURN[style])


def run_meta_prompt_ids(tokenizer: PreTrainedTokenizerBase, problem_text: str, config: Config) -> list[int]:
    """Token ids of a problem's meta prompt as a run with this config asks it: its style, reasoning, limits
    and whether its task has notions."""
    mc, style = config.meta, meta_prompt_style(config)
    text = build_meta_prompt(
        problem_text,
        pass_rate_scale=mc.pass_rate_scale,
        max_response_tokens=config.rollout.max_new_tokens,
        min_length=mc.min_length,
        notion_word=mc.notion_word,
        style=style,
        reasoning=mc.reasoning,
        notions=task_has_notions(config),
    )
    return encode_meta_prompt(tokenizer, text, style)


def _chat_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
