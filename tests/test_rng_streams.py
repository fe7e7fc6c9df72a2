"""Separate RNG streams: solution samples do not depend on what the meta path drew."""

import pytest
import torch

import masa.learner as learner_module
from masa.config import load_config
from masa.rng import RngStreams
from masa.rollout.engine import HFEngine
from masa.rollout.types import GenerationRequest, SamplingParams
from masa.trainer import Trainer


def test_streams_are_independent_and_resume_exactly():
    a, b = RngStreams(3), RngStreams(3)
    for _ in range(50):
        a.draw("metas")  # one run's meta path draws a lot more than the other's
    assert [a.draw("solutions") for _ in range(5)] == [b.draw("solutions") for _ in range(5)]
    assert a.draw("solutions") != a.draw("metas")
    saved = a.state_dict()
    expected = [a.draw(name) for name in ("solutions", "metas", "audits", "update")]
    c = RngStreams(0)
    c.load_state_dict(saved)
    assert [c.draw(name) for name in ("solutions", "metas", "audits", "update")] == expected
    assert RngStreams(4).draw("solutions") != RngStreams(3).draw("solutions")


def test_seeded_generation_ignores_and_keeps_the_global_rng(tiny):
    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer)
    prompt = [tokenizer("2 + 2 =", add_special_tokens=False)["input_ids"]]
    params = SamplingParams(1.0, 1.0, 6)
    torch.manual_seed(1)
    first = engine.generate(prompt, 3, params, seed=42)
    after_first = torch.rand(1)
    torch.manual_seed(99)
    second = engine.generate(prompt, 3, params, seed=42)
    assert [r.completion_ids for r in first[0]] == [r.completion_ids for r in second[0]]
    torch.manual_seed(1)
    assert torch.equal(torch.rand(1), after_first)  # the seeded call consumed nothing globally


def _run(tmp_path, name, *overrides):
    seen = []
    real = learner_module.policy_update

    def recording(model, optimizer, scheduler, sequences, *args, **kwargs):
        seen.append([s.completion_ids for s in sequences if s.kind == "solution"])
        return real(model, optimizer, scheduler, sequences, *args, **kwargs)

    config = load_config(
        "tiny",
        overrides=[
            f"train.output_dir={tmp_path}",
            "data.eval=null",
            f"algo={name}",
            "train.steps=3",
            "meta.n=2",
            "meta.max_new_tokens=8",
            "rollout.temperature=1.0",
            *overrides,
        ],
    )
    trainer = Trainer(config, run_dir=tmp_path / name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(learner_module, "policy_update", recording)
        for step in range(3):
            trainer.step = step
            trainer.train_step()
    weights = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    return seen, weights


def test_arms_differing_only_in_the_meta_path_see_the_same_solutions(tmp_path):
    grpo, grpo_weights = _run(tmp_path, "grpo")
    # MASA with no meta gradient (neither the meta loss nor the expert term): meta rollouts are sampled
    # (drawing randomness) but the weights follow GRPO's exactly, so every step's solution samples must be
    # GRPO's too.
    masa, masa_weights = _run(tmp_path, "masa", "meta.loss_weight=0", "meta.expert_sft=false")
    assert masa == grpo
    assert torch.equal(masa_weights, grpo_weights)


class _BatchingRecorder:
    """An engine that takes several requests at once (like vLLM) and records how it was called."""

    def __init__(self, engine):
        self.engine = engine
        self.weights_version = engine.weights_version
        self.calls: list[int] = []

    def load_weights(self, named_tensors, version):
        self.engine.load_weights(named_tensors, version)
        self.weights_version = version

    def generate(self, prompts, n, params, max_tokens=None, seed=None):
        return self.generate_many([GenerationRequest(prompts, n, params, max_tokens, seed)])[0]

    def generate_many(self, requests):
        self.calls.append(len(requests))
        return [self.engine.generate(r.prompts, r.n, r.params, r.max_tokens, r.seed) for r in requests]


def _masa_steps(tmp_path, name, *overrides):
    config = load_config(
        "tiny",
        overrides=[
            f"train.output_dir={tmp_path}",
            f"train.run_name={name}",
            "data.eval=null",
            "algo=masa",
            "train.steps=2",
            "meta.n=2",
            "rollout.n=2",
            "rollout.temperature=1.0",
            *overrides,
        ],
    )
    trainer = Trainer(config, run_dir=tmp_path / name)
    recorder = _BatchingRecorder(trainer.engine.engine)
    trainer.engine.engine = recorder
    for step in range(2):
        trainer.step = step
        trainer.train_step()
    return recorder.calls, torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


def test_parallel_stage_samples_metas_in_the_solutions_engine_call(tmp_path):
    together, together_weights = _masa_steps(tmp_path, "together")
    apart, apart_weights = _masa_steps(tmp_path, "apart", "meta.sample_with_solutions=false")
    assert together == [2, 2]  # one call per step, holding the solutions' and the metas' requests
    assert apart == [1, 1, 1, 1]
    # Each request keeps its own seed stream: with an engine whose numerics ignore the batch, the same
    # samples, so the same two updates.
    assert torch.equal(together_weights, apart_weights)
