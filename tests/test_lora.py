"""LoRA through peft: only the adapter trains, checkpoints hold the adapter, final/ the merged model."""

import random

import pytest
import torch

from masa.config import load_config
from masa.learner import Learner
from masa.models import load_model
from masa.update import TrainSequence, pack, token_logprobs

pytest.importorskip("peft")

BATCH = [TrainSequence([5, 6, 7], [8, 9, 10, 11], 1.0), TrainSequence([12, 13], [14, 15], -1.0)]


def _logprobs(model):
    with torch.no_grad():
        return token_logprobs(model, pack(BATCH, pad_id=2))


def _target_fraction(problem, texts, rollouts):
    return [sum(t < 5000 for t in r.completion_ids) / max(r.num_tokens, 1) for r in rollouts]


def test_lora_run_trains_the_adapter_only_and_saves_adapter_and_merged_model(tmp_path):
    from peft import PeftModel

    from masa.trainer import Trainer

    lora = ["model.lora.rank=4", "model.lora.target_modules=[q_proj,v_proj,up_proj]"]
    cfg = load_config(
        "tiny",
        overrides=[
            f"train.output_dir={tmp_path}",
            "data.eval=null",
            "algo.lr=1e-2",
            "algo.warmup_steps=0",
            *lora,
        ],
    )
    trainer = Trainer(cfg, run_dir=tmp_path / "r", reward_fn=_target_fraction)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.fit()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".lora_" in n for n in changed)
    assert all(p.requires_grad == (".lora_" in n) for n, p in trainer.model.named_parameters())
    trained = _logprobs(trainer.model)

    checkpoint = tmp_path / "r" / "checkpoints" / "step-2"
    assert (checkpoint / "adapter_model.safetensors").is_file() and not (
        checkpoint / "model.safetensors"
    ).exists()
    base, _ = load_model("tiny-random", seed=0)
    torch.testing.assert_close(_logprobs(PeftModel.from_pretrained(base, str(checkpoint))), trained)
    merged, _ = load_model(str(tmp_path / "r" / "final"))  # a plain Hugging Face folder
    torch.testing.assert_close(_logprobs(merged), trained, atol=1e-5, rtol=0)

    resumed = Trainer(cfg, run_dir=tmp_path / "r", resume=True, reward_fn=_target_fraction)
    assert resumed.step == 2
    torch.testing.assert_close(_logprobs(resumed.model), trained)
    assert resumed.learner.optimizer.state  # the adapter's AdamW moments came back too


def test_final_adapter_option_saves_the_adapter_alone(tmp_path):
    from peft import PeftModel

    model, tokenizer = load_model("tiny-random", seed=0)
    cfg = load_config("tiny", overrides=["model.lora.rank=2", "model.lora.final=adapter", "algo.lr=1e-2"])
    learner = Learner(model, cfg, pad_id=tokenizer.pad_token_id, autocast_dtype=None)
    learner.update(BATCH, random.Random(0))
    learner.save_final(tmp_path / "final", tokenizer)
    assert (tmp_path / "final" / "adapter_config.json").is_file()
    base, _ = load_model("tiny-random", seed=0)
    reloaded = PeftModel.from_pretrained(base, str(tmp_path / "final"))
    torch.testing.assert_close(_logprobs(reloaded), _logprobs(learner.model))
    # The engine gets the merged weights under the base model's names.
    plain, _ = load_model("tiny-random", seed=0)
    assert dict(learner.full_weights()).keys() == dict(plain.named_parameters()).keys()
