"""Chat encoding of prompts: the system turn a template adds by itself, kept or dropped."""

import copy

import pytest

from masa.config import load_config
from masa.prompts import encode_user_message, run_meta_prompt_ids


@pytest.fixture
def tokenizer(tiny):
    return copy.deepcopy(tiny[1])


def test_dropping_the_system_turn_removes_the_templates_default_and_keeps_the_message(tokenizer):
    kept = encode_user_message(tokenizer, "What is 2 + 2?")
    dropped = encode_user_message(tokenizer, "What is 2 + 2?", system_turn=False)
    assert "You are a helpful AI assistant" in tokenizer.decode(kept)
    assert "You are a helpful AI assistant" not in tokenizer.decode(dropped)
    assert tokenizer.decode(dropped).endswith("user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n")


NO_DEFAULT_SYSTEM = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
NO_SYSTEM_ROLE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}<start_of_turn>{{ m['content'] }}<end_of_turn>\n{% endfor %}"
)


@pytest.mark.parametrize(
    "template", [NO_DEFAULT_SYSTEM, NO_SYSTEM_ROLE], ids=["no-default", "no-system-role"]
)
def test_without_a_default_system_turn_the_encoding_is_unchanged(tokenizer, template):
    # A template that adds no system turn of its own, or that rejects a system role by raising.
    tokenizer.chat_template = template
    assert encode_user_message(tokenizer, "2 + 2?", system_turn=False) == encode_user_message(
        tokenizer, "2 + 2?"
    )


@pytest.mark.parametrize(
    ("overrides", "present", "absent"),
    [
        (
            ["meta.prompt=terse"],
            ["Predict your 8 tries", '"solution_length": <1-64 tokens>'],
            ["SmolLM", "notion"],
        ),
        (["meta.prompt=compact", "meta.reasoning=true"], ["SmolLM", "<meta>"], ["notion"]),
        (
            ["meta.prompt=compact", "meta.notions=true", "rollout.max_new_tokens=32"],
            ["math_notion", "32"],
            [],
        ),
    ],
    ids=["terse", "compact-reasoning", "notions"],
)
def test_a_runs_meta_prompt_follows_its_config(tokenizer, overrides, present, absent):
    # The one encoding the trainer and the benchmarks that rebuild a run's meta prompts share.
    text = tokenizer.decode(
        run_meta_prompt_ids(tokenizer, "What is 2 + 2?", load_config(overrides=overrides))
    )
    assert "What is 2 + 2?" in text
    assert all(s in text for s in present) and not any(s in text for s in absent)
