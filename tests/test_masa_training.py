"""MASA and MASA-efficient training steps on the tiny model with scripted rollouts."""

import json

import pytest
import torch
import yaml
from scripted_engine import ScriptedEngine

import masa.learner as learner_module
from masa.advantages import group_advantages
from masa.config import ConfigError, load_config
from masa.meta.prompt import render_meta_json
from masa.meta.record import META_RECORD_FILE
from masa.trainer import Trainer


def _solution(problem, j):
    # Level 1: always right. Level 5: always wrong. Level 3: long, right at the very end (early cutoff
    # must kill it). Others: every other sample right.
    level = problem.difficulty
    right = f"The answer is \\boxed{{{problem.answer}}}"
    wrong = "I guess \\boxed{-1}"
    if level == 1:
        return right
    if level == 5:
        return wrong
    if level == 3:
        return "let me think " * 12 + right
    return right if j % 2 == 0 else wrong


def _meta(problem, j):
    level = problem.difficulty
    if level == 1:
        pass_rate, length = 8, 12
    elif level == 5:
        pass_rate, length = 0, 12
    elif level == 3:
        pass_rate, length = 2 + j % 5, 10  # predicts a short solution: the cutoff limit is 2 x 10 tokens
    else:
        pass_rate, length = [1, 4, 7][j % 3], 12
    return "<meta>thinking about it</meta>" + render_meta_json(["answer"], pass_rate, length)


def _config(tmp_path, name, *overrides):
    return load_config(
        "tiny",
        overrides=[
            f"train.output_dir={tmp_path}",
            "data.eval=null",
            f"algo={name}",
            "train.batch_problems=4",
            "rollout.n=4",
            "meta.n=3",
            "rollout.max_new_tokens=48",
            "meta.max_new_tokens=48",
            "efficient.cutoff_min_tokens=4",
            "efficient.audit_fraction=0",
            "efficient.switch=steps",
            *overrides,
        ],
    )


def _trainer(tmp_path, name, *overrides, run="r", resume=False, belief=None):
    trainer = Trainer(_config(tmp_path, name, *overrides), run_dir=tmp_path / run, resume=resume)
    # Behind the trainer's version check, which still sees every optimiser step.
    trainer.engine.engine = ScriptedEngine(
        trainer.tokenizer, trainer.train_problems, _solution, _meta, belief=belief
    )
    return trainer


def _record_updates(monkeypatch):
    seen = []
    real = learner_module.policy_update

    def recording(model, optimizer, scheduler, sequences, *args, **kwargs):
        seen.append(list(sequences))
        return real(model, optimizer, scheduler, sequences, *args, **kwargs)

    monkeypatch.setattr(learner_module, "policy_update", recording)
    return seen


def test_masa_step_trains_solutions_and_metas_in_separate_groups(tmp_path, monkeypatch):
    seen = _record_updates(monkeypatch)
    trainer = _trainer(tmp_path, "masa", "data.arithmetic_levels=[2,3,4]")
    before = torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters()])
    logs = [trainer.train_step() for _ in range(2)]
    trainer.step = 2
    after = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])

    for sequences in seen:
        metas = [s for s in sequences if s.kind == "meta"]
        solutions = [s for s in sequences if s.kind == "solution"]
        assert len(solutions) == 4 * 4 and len(metas) == 4 * 3
        # Each problem's 3 meta rollouts form their own group: advantages sum to 0 within it.
        for start in range(0, len(metas), 3):
            assert sum(s.advantage for s in metas[start : start + 3]) == pytest.approx(0.0, abs=1e-9)
        assert any(s.advantage != 0 for s in metas)
        assert any(s.advantage != 0 for s in solutions)
    for log, sequences in zip(logs, seen, strict=True):
        assert log["meta/parse_rate"] == 1.0
        # Both kinds reach the backward pass: every non-zero-advantage sequence, solution or meta, is trained
        # (and every expert target, by default).
        assert any(s.kind == "expert" for s in sequences)
        assert log["update/trained_sequences"] == sum(s.has_signal for s in sequences)
    assert not torch.equal(before, after)
    rows = [json.loads(x) for x in (tmp_path / "r" / "meta_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 4
    assert all(len(r["predicted_pass_rates"]) == 3 for r in rows)


def test_meta_rollouts_sample_and_train_at_meta_temperature(tmp_path, monkeypatch):
    seen = _record_updates(monkeypatch)
    trainer = _trainer(tmp_path, "masa", "rollout.temperature=0.9", "meta.temperature=0.4")
    temperatures = []
    real_generate = trainer.engine.generate_many

    def recording(requests):
        temperatures.extend(r.params.temperature for r in requests)
        return real_generate(requests)

    trainer.engine.generate_many = recording
    trainer.train_step()
    assert temperatures == [0.9, 0.4]  # solutions, then metas
    assert {s.temperature for s in seen[0] if s.kind == "solution"} == {0.9}
    assert {s.temperature for s in seen[0] if s.kind == "meta"} == {0.4}


def test_meta_advantages_are_the_group_normalised_meta_rewards(tmp_path, monkeypatch):
    seen = _record_updates(monkeypatch)
    # The paper's formulation: exp pass-rate reward, std-scaled meta advantages.
    trainer = _trainer(tmp_path, "masa", "data.arithmetic_levels=[4]", "meta.preset=paper")
    trainer.train_step()
    metas = [s for s in seen[0] if s.kind == "meta"]
    # Level 4: 2 of 4 solutions right (p = 0.5) and lengths equal; predictions 1/8, 4/8, 7/8 of the way,
    # so only the pass-rate component differs: 0.01 ** 0.375, 1, 0.01 ** 0.375. The notion "answer" is
    # named by the right solutions only (reward 1); every length prediction hits the correct length.
    pass_reward = 0.01 ** (3 / 8)
    expected = group_advantages([[(1 + pass_reward + 1) / 3, (1 + 1 + 1) / 3, (1 + pass_reward + 1) / 3]])
    for start in range(0, len(metas), 3):
        got = [s.advantage for s in metas[start : start + 3]]
        assert got == pytest.approx(expected.advantages[0])


def test_sequential_stage_gates_and_cuts(tmp_path):
    trainer = _trainer(
        tmp_path, "masa-efficient", "efficient.warmup_steps=1", "data.arithmetic_levels=[1,3,4,5]"
    )
    engine = trainer.engine.engine
    first = trainer.train_step()
    trainer.step = 1
    assert first["stage/sequential"] == 0.0
    # The parallel stage rolls out solutions for every problem, trivial and impossible ones included.
    assert {p.difficulty for p in engine.solution_calls[0]} <= {1, 3, 4, 5}

    engine.solution_calls.clear()
    log = trainer.train_step()
    assert log["stage/sequential"] == 1.0
    rolled_out = [p for call in engine.solution_calls for p in call]
    # Predicted trivial (level 1) and unsolvable (level 5) problems get no solution rollouts at all.
    assert rolled_out and all(p.difficulty in (3, 4) for p in rolled_out)
    assert log["gate/gated"] > 0
    # Level 3 solutions are right but run past 2 x the predicted 10 tokens: cut off and scored 0.
    level3 = sum(p.difficulty == 3 for p in rolled_out)
    level4 = sum(p.difficulty == 4 for p in rolled_out)
    assert log["cutoff/cut_fraction"] == pytest.approx(level3 / (level3 + level4))
    assert log["reward/solution"] == pytest.approx(0.5 * level4 / (level3 + level4))
    assert log["cutoff/mean_limit"] <= 48


def test_expert_sft_is_a_weighted_term_of_the_same_update(tmp_path, monkeypatch):
    seen = _record_updates(monkeypatch)
    trainer = _trainer(
        tmp_path,
        "masa",
        "meta.expert_sft=true",
        "meta.expert_source=buffer",
        "meta.prompt=paper",  # with reasoning, which the targets keep (the JSON-only path: the next test)
        "meta.reasoning=true",
        "meta.expert_batch=16",  # every buffered target in every step's term, so all of them are learned
        "meta.expert_weight=50",
        "meta.loss_weight=0",
        "algo.lr=1e-2",
        "algo.warmup_steps=0",
        "data.arithmetic_levels=[4]",
    )
    trainer.train_step()
    assert len(trainer.expert_buffer) == 4
    prompt, target = trainer.expert_buffer[0]
    text = trainer.tokenizer.decode(target, skip_special_tokens=True)
    # The target keeps the expert's reasoning and states the true statistics: 2 of 4 right -> 4 of 8.
    assert "<meta>thinking about it</meta>" in text
    assert '"pass_rate": 4' in text
    # No second optimiser: the supervised targets ride in the one policy update of the step.
    assert not hasattr(trainer, "sft_optimizer")
    assert sum(s.kind == "expert" for s in seen[0]) == 4

    from masa.update import TrainSequence, pack, token_logprobs

    batch = pack([TrainSequence(p, t, 0.0) for p, t in trainer.expert_buffer], trainer.tokenizer.pad_token_id)

    def nll():
        with torch.no_grad():
            lp = token_logprobs(trainer.model, batch)
        return float(-(lp * batch.completion_mask).sum() / batch.completion_mask.sum())

    start = nll()
    for step in range(1, 4):
        trainer.step = step
        log = trainer.train_step()
    assert log["update/tokens_expert"] > 0
    assert nll() < start - 0.25


def test_compact_json_only_meta_path_prompts_and_targets_without_reasoning(tmp_path, monkeypatch):
    seen = _record_updates(monkeypatch)
    trainer = _trainer(
        tmp_path,
        "masa",
        "meta.prompt=compact",
        "meta.reasoning=false",
        "meta.expert_sft=true",
        "data.arithmetic_levels=[4]",
    )
    trainer.train_step()
    meta_prompt = trainer.tokenizer.decode(next(s for s in seen[0] if s.kind == "meta").prompt_ids)
    assert "Reply with this JSON only" in meta_prompt and "<meta>" not in meta_prompt
    target = next(s for s in seen[0] if s.kind == "expert").completion_ids
    text = trainer.tokenizer.decode(target, skip_special_tokens=True)
    assert text.startswith("{") and "<meta>" not in text and '"pass_rate": 4' in text


def test_terse_meta_prompt_is_trained_without_the_default_system_turn(tmp_path, monkeypatch):
    seen = _record_updates(monkeypatch)
    trainer = _trainer(
        tmp_path, "masa", "meta.prompt=terse", "meta.expert_sft=true", "meta.expert_source=step"
    )
    trainer.train_step()
    for kind in ("meta", "expert"):
        prompt = trainer.tokenizer.decode(next(s for s in seen[0] if s.kind == kind).prompt_ids)
        assert "Predict your 8 tries as JSON only" in prompt and "SmolLM" not in prompt
    solution = trainer.tokenizer.decode(next(s for s in seen[0] if s.kind == "solution").prompt_ids)
    assert "SmolLM" in solution  # the solution prompt is GRPO's, system turn and all


def test_masa_defaults_to_the_terse_prompt_and_no_auxiliary_only_steps_and_masa_efficient_does_not(tmp_path):
    masa = _trainer(tmp_path, "masa", run="m")
    efficient = _trainer(tmp_path, "masa-efficient", run="e")
    assert not masa.learner.settings.auxiliary_alone and efficient.learner.settings.auxiliary_alone
    problem = masa.train_problems[0]
    assert "Predict your 8 tries as JSON only" in masa.tokenizer.decode(masa._meta_ids(problem))
    assert "Predict your own solution" in efficient.tokenizer.decode(efficient._meta_ids(problem))
    # What the model folders will tell `masa eval --meta`.
    assert json.loads(masa.model_files[META_RECORD_FILE])["prompt"] == "terse"
    assert json.loads(efficient.model_files[META_RECORD_FILE])["prompt"] == "compact"
    # The run folder keeps the values, not the nulls, so a resume under a later masa repeats them.
    recorded = yaml.safe_load((tmp_path / "m" / "config.yaml").read_text())["meta"]
    assert (recorded["prompt"], recorded["steps_without_solution_signal"], recorded["n"]) == (
        "terse",
        "skip",
        3,
    )


def test_expert_targets_from_the_step_share_its_meta_prompts(tmp_path, monkeypatch):
    seen = _record_updates(monkeypatch)
    trainer = _trainer(
        tmp_path,
        "masa",
        "meta.expert_sft=true",
        "meta.expert_source=step",
        "meta.expert_batch=3",
        "data.arithmetic_levels=[2,4]",
    )
    for step in range(2):
        trainer.step = step
        log = trainer.train_step()
        experts = [s for s in seen[step] if s.kind == "expert"]
        meta_prompts = {tuple(s.prompt_ids) for s in seen[step] if s.kind == "meta"}
        # Three of this step's four problems, each target on the prompt its meta rollouts had.
        assert len(experts) == 3 and log["expert/targets_trained"] == 3
        assert len({tuple(s.prompt_ids) for s in experts}) == 3
        assert {tuple(s.prompt_ids) for s in experts} <= meta_prompts
    # No buffer is kept: every target states the statistics of the step that trains on it.
    assert trainer.expert_buffer == [] and "expert/buffer" not in log


def test_refill_exhaustion_fills_the_batch_with_the_first_gated_problems(tmp_path):
    # Every problem is predicted trivial or unsolvable: all are gated and the refills run out. The update still
    # gets its batch of solution groups, from the first problems examined, and their outcomes are audits.
    trainer = _trainer(
        tmp_path,
        "masa-efficient",
        "efficient.warmup_steps=0",
        "efficient.refill_rounds=2",
        "data.arithmetic_levels=[1,5]",
    )
    log = trainer.train_step()
    scripted = trainer.engine.engine
    rolled_out = [p.id for call in scripted.solution_calls for p in call]
    assert rolled_out == [p.id for p in scripted.meta_calls[0]]
    assert log["gate/examined"] == 4 * 3  # the batch, then two refill rounds of 4
    assert log["gate/gated"] == 12 and log["gate/skipped"] == 8
    assert log["gate/filled"] == 4 and log["gate/batch_shortfall"] == 0
    assert log["gate/audited"] == 4 and log["gate/precision"] == 1.0  # the script's groups are all flat
    assert log["tokens/solution"] > 0


def test_without_filling_refill_exhaustion_leaves_a_short_batch_and_still_steps(tmp_path):
    trainer = _trainer(
        tmp_path,
        "masa-efficient",
        "efficient.warmup_steps=0",
        "efficient.refill_rounds=2",
        "efficient.fill_from_gated=false",
        "data.arithmetic_levels=[1,5]",
    )
    log = trainer.train_step()
    assert sum(len(call) for call in trainer.engine.engine.solution_calls) == 0
    assert log["gate/gated"] == log["gate/skipped"] == 12
    assert log["gate/filled"] == 0 and log["gate/batch_shortfall"] == 4
    assert log["tokens/solution"] == 0 and log["tokens/meta"] > 0
    assert log["update/trained_sequences"] == 0


def test_audited_problems_are_rolled_out_and_measure_precision(tmp_path):
    trainer = _trainer(
        tmp_path,
        "masa-efficient",
        "efficient.warmup_steps=0",
        "efficient.audit_fraction=1.0",
        "data.arithmetic_levels=[1,4,5]",
    )
    log = trainer.train_step()
    rolled_out = [p.difficulty for call in trainer.engine.engine.solution_calls for p in call]
    assert 1 in rolled_out or 5 in rolled_out
    # Every gated problem was audited, and the script makes them truly all-right or all-wrong.
    assert log["gate/audited"] == log["gate/gated"] > 0
    assert log["gate/precision"] == 1.0


def test_precision_switch_enters_the_sequential_stage_after_patience(tmp_path):
    trainer = _trainer(
        tmp_path,
        "masa-efficient",
        "efficient.switch=precision",
        "efficient.switch_patience=2",
        "efficient.switch_precision=0.9",
        "data.arithmetic_levels=[1,4,5]",
    )
    stages = []
    for step in range(4):
        log = trainer.train_step()
        trainer.step = step + 1
        stages.append(log["stage/sequential"])
        if not log["stage/sequential"]:
            assert log["gate/shadow_precision"] == 1.0
    assert stages == [0.0, 0.0, 1.0, 1.0]


def test_resumed_masa_efficient_run_makes_the_same_gating_decisions(tmp_path):
    common = ["efficient.warmup_steps=1", "efficient.audit_fraction=0.5", "data.arithmetic_levels=[1,3,4,5]"]

    def run(name, steps, resume=False):
        overrides = (f"train.steps={steps}", "train.save_every=2", *common)
        trainer = _trainer(tmp_path, "masa-efficient", *overrides, run=name, resume=resume)
        trainer.fit()
        rows = (tmp_path / name / "meta_predictions.jsonl").read_text().splitlines()
        metrics = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [json.loads(x) for x in rows], metrics

    full_rows, full_metrics = run("full", 5)
    run("split", 2)
    split_rows, split_metrics = run("split", 5, resume=True)
    assert split_rows == full_rows
    keys = ("gate/gated", "gate/audited", "gate/examined", "reward/solution", "update/loss")
    assert [{k: m.get(k) for k in keys} for m in split_metrics] == [
        {k: m.get(k) for k in keys} for m in full_metrics
    ]


def test_calibration_switch_starts_gating_once_predictions_know_the_problems(tmp_path):
    trainer = _trainer(
        tmp_path,
        "masa-efficient",
        "efficient.switch=calibration",
        "efficient.switch_window=2",
        "data.arithmetic_levels=[1,4,5]",
    )
    logs = []
    for step in range(3):
        trainer.step = step
        logs.append(trainer.train_step())
    # Scripted predictions are right (8/8 on level 1, 0/8 on level 5, about 4/8 on level 4): after the
    # two-step window the direction-aware precision and Pearson pass their bars, and gating begins.
    assert [log["stage/sequential"] for log in logs] == [0.0, 0.0, 1.0]
    assert logs[1]["switch/precision_direction"] == 1.0 and logs[1]["switch/pearson"] > 0.9
    assert logs[0]["gate/shadow_precision_direction"] == 1.0


def _undecided(problem, j):
    return [0.0, 0.0, 0.25, 0.0, 0.5, 0.0, 0.25, 0.0, 0.0]  # believes 4 of 8, whatever it sampled


@pytest.mark.parametrize("readout", ["sampled", "expected"])
def test_the_gate_reads_the_sampled_or_the_expected_count(tmp_path, readout):
    """Level 1 and 5 samples state 8/8 and 0/8, but the model's distribution at that token has mean 4/8:
    the sampled reading gates both, the expected one neither."""
    trainer = _trainer(
        tmp_path,
        "masa-efficient",
        "efficient.warmup_steps=1",
        "data.arithmetic_levels=[1,5]",
        f"efficient.gate_readout={readout}",
        belief=_undecided,
    )
    first = trainer.train_step()
    trainer.step = 1
    assert first["meta/expected_readout_rate"] == 1.0
    assert first["meta/pass_rate_mae_expected"] == pytest.approx(0.5)  # actual rates are 1 and 0
    rows = [json.loads(x) for x in (trainer.run_dir / "meta_predictions.jsonl").read_text().splitlines()]
    assert all(r == pytest.approx(0.5) for row in rows for r in row["expected_pass_rates"])
    assert {r for row in rows for r in row["predicted_pass_rates"]} == {0.0, 1.0}
    assert first["gate/shadow_gated_fraction"] == (1.0 if readout == "sampled" else 0.0)
    second = trainer.train_step()
    assert second["stage/sequential"] == 1.0
    assert (second["gate/gated"] > 0) == (readout == "sampled")


def test_an_expected_gate_needs_counts_that_are_single_tokens(tmp_path):
    with pytest.raises(ConfigError, match="gate_readout=expected needs every count"):
        _trainer(tmp_path, "masa-efficient", "efficient.gate_readout=expected", "meta.pass_rate_scale=10")


def test_restating_the_question_earns_no_reward(tmp_path):
    def restated(problem, j):
        expression = problem.prompt.removeprefix("What is ").removesuffix("?")
        return f'\\boxed{{"{expression}"}}' if j % 2 == 0 else f"\\boxed{{{expression}}}"

    trainer = _trainer(tmp_path, "grpo")
    trainer.engine.engine = ScriptedEngine(trainer.tokenizer, trainer.train_problems, restated, _meta)
    assert trainer.train_step()["reward/solution"] == 0.0
