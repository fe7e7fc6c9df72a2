"""End-to-end training on the tiny random model: it learns, and it resumes exactly."""

import json

import pytest
import torch

from masa.config import load_config
from masa.trainer import Trainer

TARGET_IDS = 5000  # tokens with id below this count as "target": about 10% of the vocabulary


def _target_fraction(problem, texts, rollouts):
    return [sum(t < TARGET_IDS for t in r.completion_ids) / max(r.num_tokens, 1) for r in rollouts]


def _config(tmp_path, *overrides):
    return load_config(
        "tiny",
        overrides=[f"train.output_dir={tmp_path}", "data.eval=null", *overrides],
    )


def test_grpo_raises_a_trivially_learnable_reward(tmp_path):
    cfg = _config(
        tmp_path,
        "train.steps=12",
        "train.batch_problems=4",
        "rollout.n=8",
        "rollout.max_new_tokens=8",
        "algo.lr=3e-3",
        "algo.warmup_steps=0",
        "algo.micro_batch_sequences=32",
    )
    trainer = Trainer(cfg, run_dir=tmp_path / "learn", reward_fn=_target_fraction)
    trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "learn" / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward/solution"] for r in rows if "reward/solution" in r]
    assert len(rewards) == 12
    start, end = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert start < 0.2
    assert end > start + 0.25, rewards


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# With a KL term the resumed run must anchor to the base model, not to the checkpoint it loads.
@pytest.mark.parametrize("extra", [[], ["algo.ppo_epochs=2", "algo.mini_batches=2"], ["algo.kl_coef=0.5"]])
def test_resume_reproduces_an_uninterrupted_run(tmp_path, extra):
    common = ["train.batch_problems=2", "rollout.n=4", "algo.lr=1e-3", "train.save_every=2", *extra]
    full = Trainer(
        _config(tmp_path, "train.steps=4", *common), run_dir=tmp_path / "full", reward_fn=_target_fraction
    )
    full.fit()

    first = Trainer(
        _config(tmp_path, "train.steps=2", *common), run_dir=tmp_path / "split", reward_fn=_target_fraction
    )
    first.fit()
    resumed = Trainer(
        _config(tmp_path, "train.steps=4", *common),
        run_dir=tmp_path / "split",
        resume=True,
        reward_fn=_target_fraction,
    )
    assert resumed.step == 2
    resumed.fit()

    assert torch.equal(_params(full.model), _params(resumed.model))

    def rows(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return {r["step"]: r for r in map(json.loads, lines)}

    full_rows, split_rows = rows("full"), rows("split")
    assert sorted(split_rows) == sorted(full_rows) == [1, 2, 3, 4]
    for step in (3, 4):
        for key in ("reward/solution", "tokens/solution", "update/loss", "update/grad_norm"):
            assert split_rows[step][key] == full_rows[step][key], (step, key)


def test_refuses_to_overwrite_a_run_and_to_resume_nothing(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    with pytest.raises(FileExistsError, match="not a masa run"):
        Trainer(_config(tmp_path), run_dir=run)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        Trainer(_config(tmp_path), run_dir=run, resume=True)


def test_ctrl_c_finishes_the_step_saves_and_resumes(tmp_path):
    import os
    import signal

    calls = []

    def interrupt_on_second_step(problem, texts, rollouts):
        calls.append(problem.id)
        if len(calls) == 3:  # inside step 2 (two problems per step): the user presses Ctrl-C
            os.kill(os.getpid(), signal.SIGINT)
        return _target_fraction(problem, texts, rollouts)

    cfg = _config(tmp_path, "train.steps=4", "train.batch_problems=2")
    result = Trainer(cfg, run_dir=tmp_path / "run", reward_fn=interrupt_on_second_step).fit()
    assert result.interrupted and result.steps_completed == 2
    assert (tmp_path / "run" / "checkpoints" / "step-2").is_dir()
    assert not (tmp_path / "run" / "final").exists()
    resumed = Trainer(cfg, run_dir=tmp_path / "run", resume=True, reward_fn=_target_fraction)
    assert resumed.step == 2
    assert resumed.fit().steps_completed == 4


def test_bad_data_path_fails_at_start_up_naming_the_file(tmp_path):
    from masa.data.loaders import DataError

    with pytest.raises(DataError, match="missing.jsonl"):
        Trainer(_config(tmp_path, f"data.train={tmp_path / 'missing.jsonl'}"), run_dir=tmp_path / "x")


def test_a_malformed_training_row_stops_the_run_unless_skip_invalid(tmp_path):
    from masa.data.loaders import DataError
    from masa.trainer import load_problem_splits

    data = tmp_path / "train.jsonl"
    rows = [
        {"problem": "1+1?", "answer": "2"},
        {"problem": "2+2?", "answer": ""},
        {"problem": "3+3?", "answer": 6},
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    strict = _config(tmp_path, f"data.train={data}")
    with pytest.raises(DataError, match=r"row 2, field 'answer': empty \(data\.skip_invalid=true drops"):
        load_problem_splits(strict)
    train, _ = load_problem_splits(_config(tmp_path, f"data.train={data}", "data.skip_invalid=true"))
    assert [(p.prompt, p.answer) for p in train] == [("1+1?", "2"), ("3+3?", "6")]
