"""Several processes (gloo on CPU) give the one-process result: the update, the decisions, the checkpoints."""

import json
import os
import random
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from masa.config import load_config
from masa.distributed import Ranks
from masa.learner import Learner
from masa.models import load_model
from masa.update import TrainSequence

WORLD = 2


def _spawn(worker, tmp_path, *args):
    mp.spawn(worker, args=(tmp_path, *args), nprocs=WORLD, join=True)


def _join(rank: int, tmp_path) -> Ranks:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=rank, world_size=WORLD)
    return Ranks(rank=rank, world=WORLD)


def _sequences(vocab: int, case: str = "") -> list[TrainSequence]:
    """Lengths chosen so the ranks' shares differ in sequences and tokens (rank 0: 3 long, rank 1: 2).
    Sampler log-probs far enough from the policy's that some importance weights hit the cap.

    For prefix sharing, two solution groups of three (prompt lengths 3 and 4) and a meta group of three.
    """
    rng = random.Random(1)
    if "prefix sharing" in case:
        groups = [(3, "solution", [2, 9, 5]), (4, "solution", [1, 7, 3]), (5, "meta", [4, 11, 6])]
        sequences = []
        for prompt_length, kind, lengths in groups:
            prompt = [rng.randrange(vocab) for _ in range(prompt_length)]
            for length, advantage in zip(lengths, (1.0, -0.4, 0.6), strict=True):
                completion = [rng.randrange(vocab) for _ in range(length)]
                sampler = [-8.0 - 8.0 * rng.random() for _ in range(length)]
                sequences.append(
                    TrainSequence(prompt, completion, advantage, kind=kind, sampler_logprobs=sampler)
                )
        return sequences
    shapes = [(3, 2, 1.0), (5, 9, -0.5), (2, 17, 0.7), (4, 5, -1.2), (6, 30, 0.3), (3, 4, 0.0)]
    return [
        TrainSequence(
            [rng.randrange(vocab) for _ in range(p)],
            [rng.randrange(vocab) for _ in range(c)],
            a,
            kind=k,
            sampler_logprobs=[-8.0 - 8.0 * rng.random() for _ in range(c)],
        )
        for (p, c, a), k in zip(shapes, ["solution", "meta"] * 3, strict=True)
    ]


def _learner(ranks: Ranks, *overrides, resume_from: Path | None = None):
    torch.manual_seed(0)  # LoRA initialises its adapters from torch's generator, as the trainer seeds it
    model, tokenizer = load_model("tiny-random", seed=0)
    cfg = load_config("tiny", overrides=["algo.lr=2e-4", "algo.warmup_steps=0", *overrides])
    learner = Learner(
        model, cfg, pad_id=tokenizer.pad_token_id, autocast_dtype=None, ranks=ranks, resume_from=resume_from
    )
    return learner, tokenizer


def _full_params(learner) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in learner.full_weights()}


UPDATE_CASES = {
    "micro-batches": ["algo.micro_batch_sequences=2"],
    # Rank 0's solutions (5 and 36 tokens) take two micro-batches under the cap, rank 1's one (19).
    "token cap": ["algo.micro_batch_sequences=8", "algo.micro_batch_tokens=24"],
    "mini-batches, epochs, importance sampling": [
        "algo.mini_batches=2",
        "algo.ppo_epochs=2",
        "algo.micro_batch_sequences=1",
        "rollout.importance_sampling=true",
    ],
    # Its learner also saves a sharded checkpoint, which one process then loads.
    "kl and lora": [
        "algo.kl_coef=0.1",
        "model.lora.rank=4",
        "algo.micro_batch_sequences=2",
        "train.checkpoint_format=sharded",
    ],
    # Rank 0's first micro-batch shares a prompt (two forwards), rank 1's does not: the ranks must still
    # run the same passes, or FSDP's all-gathers pair up wrongly and both wait for ever. One optimiser step:
    # the old log-probs (and the importance weights) come from the training forward.
    "prefix sharing, importance sampling": [
        "algo.prefix_sharing=true",
        "algo.micro_batch_sequences=2",
        "rollout.importance_sampling=true",
    ],
}


def _update_worker(rank, tmp_path):
    ranks = _join(rank, tmp_path)
    results = {}
    for case, overrides in UPDATE_CASES.items():
        learner, tokenizer = _learner(ranks, *overrides)
        assert type(learner.model).__name__.startswith("FSDP")
        log = learner.update(_sequences(len(tokenizer), case), random.Random(0), grad_stats=True)
        params = _full_params(learner)
        replica = dict(learner.generation_model.named_parameters())
        assert all(torch.equal(replica[name], tensor) for name, tensor in params.items())
        results[case] = {"params": params, "log": log}
        if learner.sharded_checkpoints:
            learner.save_checkpoint(tmp_path / case, 1, tokenizer, learner.state_dict(), keep=1)
    if ranks.is_main:
        torch.save(results, tmp_path / "two.pt")
    dist.destroy_process_group()


def test_two_processes_update_like_one(tmp_path):
    """Rank 0 trains 3 sequences, rank 1 two shorter ones (plus a zero-weight stand-in)."""
    _spawn(_update_worker, tmp_path)
    two = torch.load(tmp_path / "two.pt")
    for case, overrides in UPDATE_CASES.items():
        learner, tokenizer = _learner(Ranks(), *overrides)
        before = _full_params(learner)
        one_log = learner.update(_sequences(len(tokenizer), case), random.Random(0), grad_stats=True)
        one = _full_params(learner)
        assert one.keys() == two[case]["params"].keys()
        moved = max(float((one[k] - before[k]).abs().max()) for k in one)
        assert moved > 1e-4, case  # the update did something worth comparing
        for name in one:
            torch.testing.assert_close(
                two[case]["params"][name], one[name], atol=1e-5, rtol=0, msg=f"{case}: {name}"
            )
        compared = ("update/loss", "update/loss_meta", "update/grad_norm", "update/trained_sequences")
        for key in (*compared, "update/ref_kl", "grad/norm_solution", "grad/cos_solution_meta"):
            assert two[case]["log"][key] == pytest.approx(one_log[key], rel=1e-4, abs=1e-6), (case, key)
        # The off-policy statistics are the whole batch's, not rank 0's share.
        off_policy = [k for k in one_log if k.startswith("rollout/")]
        assert len(off_policy) == (4 if "importance sampling" in case else 0), case
        assert 0 < one_log.get("rollout/is_capped_fraction", 0.5) < 1
        for key in off_policy:
            assert two[case]["log"][key] == pytest.approx(one_log[key], rel=1e-4, abs=1e-6), (case, key)
    _sharded_lora_checkpoint_loads_in_one_process(tmp_path / "kl and lora" / "step-1", two["kl and lora"])


def _sharded_lora_checkpoint_loads_in_one_process(checkpoint: Path, two) -> None:
    """The shards hold the adapter and its optimiser state alone; one process loads them from 2 ranks'."""
    from torch.distributed.checkpoint import FileSystemReader

    from masa.checkpoint import SHARDS_DIR

    saved = FileSystemReader(checkpoint / SHARDS_DIR).read_metadata().state_dict_metadata
    tensors = [key for key in saved if not key.startswith("optimizer.param_groups.")]  # (hyperparameters)
    assert any(key.startswith("optimizer.state.") for key in tensors)
    assert all(".lora_" in key for key in tensors)
    assert "optimizer" not in torch.load(checkpoint / "trainer_state.pt", weights_only=False)
    learner, _ = _learner(Ranks(), *UPDATE_CASES["kl and lora"], resume_from=checkpoint)
    assert not learner.sharded_checkpoints  # one process writes full checkpoints, whatever the setting
    for name, tensor in _full_params(learner).items():
        torch.testing.assert_close(tensor, two["params"][name], atol=1e-6, rtol=0, msg=name)
    state = learner.optimizer.state_dict()["state"]
    assert len(state) == len(learner.optimizer.param_groups[0]["params"])
    assert all(float(s["step"]) == 1 for s in state.values())
    assert any(s["exp_avg"].abs().sum() > 0 for s in state.values())  # (lora_A's stay 0 while B is 0)


def test_rank_shares_are_whole_contiguous_and_cover_everything():
    for count in range(7):
        shares = [Ranks(rank=r, world=3).share(count) for r in range(3)]
        items = [i for s in shares for i in range(count)[s]]
        assert items == list(range(count))
        assert max(len(range(count)[s]) for s in shares) - min(len(range(count)[s]) for s in shares) <= 1


def test_checkpoints_are_sharded_above_the_size_and_only_under_torchrun():
    from masa.checkpoint import writes_sharded

    train = load_config("tiny", overrides=["train.sharded_checkpoint_above_gb=2"]).train
    assert train.checkpoint_format == "auto"
    assert writes_sharded(train, distributed=True, state_bytes=3 * 10**9)
    assert not writes_sharded(train, distributed=True, state_bytes=2 * 10**9)
    assert not writes_sharded(train, distributed=False, state_bytes=3 * 10**9)  # one process: always full
    for chosen, sharded in (("full", False), ("sharded", True)):
        train.checkpoint_format = chosen
        for size in (10**9, 3 * 10**9):
            assert writes_sharded(train, distributed=True, state_bytes=size) is sharded
            assert not writes_sharded(train, distributed=False, state_bytes=size)


# ---------------------------------------------------------------- whole training runs, scripted rollouts
def _solution(problem, j):
    right, wrong = f"The answer is \\boxed{{{problem.answer}}}", "I guess \\boxed{-1}"
    if problem.difficulty == 1:
        return right
    if problem.difficulty == 5:
        return wrong
    return right if j % 2 == 0 else wrong


def _meta(problem, j):
    from masa.meta.prompt import render_meta_json

    passes = {1: 8, 5: 0}.get(problem.difficulty, [1, 4, 7][j % 3])
    return "<meta>thinking</meta>" + render_meta_json(["answer"], passes, 12)


def _run_config(tmp_path, algo):
    return load_config(
        "tiny",
        overrides=[
            f"train.output_dir={tmp_path}",
            "data.eval=null",
            f"algo={algo}",
            "data.arithmetic_levels=[1,3,5]",
            "train.steps=3",
            "train.batch_problems=5",
            "rollout.n=4",
            "meta.n=3",
            "rollout.max_new_tokens=24",
            "meta.max_new_tokens=48",
            "algo.micro_batch_sequences=8",
            "efficient.switch=steps",
            "efficient.warmup_steps=1",
            "efficient.audit_fraction=0.5",
            "efficient.cutoff_min_tokens=4",
        ],
    )


def _scripted_trainer(cfg, run_dir):
    from scripted_engine import ScriptedEngine

    from masa.distributed import SplitEngine
    from masa.trainer import Trainer

    trainer = Trainer(cfg, run_dir=run_dir)
    scripted = ScriptedEngine(trainer.tokenizer, trainer.train_problems, _solution, _meta)
    # Behind the trainer's version check (and, with several ranks, its split of the prompts).
    synced = trainer.engine.engine if isinstance(trainer.engine, SplitEngine) else trainer.engine
    synced.engine = scripted
    return trainer, scripted


def _train_worker(rank, tmp_path, algo):
    _join(rank, tmp_path)
    trainer, scripted = _scripted_trainer(_run_config(tmp_path, algo), tmp_path / "two")
    trainer.fit()
    (tmp_path / f"generated-{rank}.json").write_text(json.dumps(_generated(scripted)))
    dist.destroy_process_group()


def _generated(scripted) -> dict[str, list[str]]:
    """The problems an engine generated solutions and metas for, in order."""
    return {
        "solution": [p.id for call in scripted.solution_calls for p in call],
        "meta": [p.id for call in scripted.meta_calls for p in call],
    }


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _final_weights(run_dir):
    from safetensors.torch import load_file

    return load_file(run_dir / "final" / "model.safetensors")


@pytest.mark.parametrize("algo", ["grpo", "masa-efficient"])
def test_two_process_run_decides_like_one(tmp_path, algo):
    one, scripted = _scripted_trainer(_run_config(tmp_path, algo), tmp_path / "one")
    one.fit()
    _spawn(_train_worker, tmp_path, algo)

    # Ranks generate disjoint problems that together are exactly the one-process run's.
    ranks = [json.loads((tmp_path / f"generated-{r}.json").read_text()) for r in range(WORLD)]
    for kind, ids in _generated(scripted).items():
        assert not set(ranks[0][kind]) & set(ranks[1][kind])
        assert sorted(ranks[0][kind] + ranks[1][kind]) == sorted(ids)
        assert len(ids) == len(set(ids))  # no problem seen twice, so disjointness means something

    one_rows, two_rows = _rows(tmp_path / "one" / "metrics.jsonl"), _rows(tmp_path / "two" / "metrics.jsonl")
    assert [r["step"] for r in two_rows] == [1, 2, 3]  # written once, by rank 0
    decided = [k for k in one_rows[-1] if k.startswith(("gate/", "cutoff/", "stage/", "reward/", "tokens/"))]
    for a, b in zip(one_rows, two_rows, strict=True):
        assert {k: a.get(k) for k in decided} == {k: b.get(k) for k in decided}
        differing = {k: (a.get(k), b.get(k)) for k in {*a, *b} - {"time/elapsed_s"} if a.get(k) != b.get(k)}
        assert b["update/trained_sequences"] == a["update/trained_sequences"], differing
    if algo == "masa-efficient":
        assert two_rows[-1]["stage/sequential"] == 1.0 and two_rows[-1]["gate/gated"] > 0
        predictions = "meta_predictions.jsonl"
        assert _rows(tmp_path / "two" / predictions) == _rows(tmp_path / "one" / predictions)

    one_final, two_final = _final_weights(tmp_path / "one"), _final_weights(tmp_path / "two")
    for name, tensor in one_final.items():
        torch.testing.assert_close(two_final[name], tensor, atol=1e-4, rtol=0, msg=name)


# ---------------------------------------------------------------- torchrun: the real command line
TORCHRUN_SETTINGS = [
    "--preset",
    "tiny",
    "data.eval=null",
    "train.steps=3",
    "train.save_every=2",
    "train.batch_problems=3",
    "model.threads=1",
]


def _torchrun(tmp_path, run, *args, env=None):
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={WORLD}"]
    if "--resume" not in args:
        args = (*TORCHRUN_SETTINGS, f"train.output_dir={tmp_path}", f"train.run_name={run}", *args)
    return subprocess.run(
        [*command, str(Path(__file__).parent / "torchrun_train.py"), "train", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory):
    """An uninterrupted 2-process GRPO run of 3 steps (checkpoint at step 2), through masa's CLI; its
    checkpoints are sharded, its final/ a plain Hugging Face folder all the same."""
    tmp_path = tmp_path_factory.mktemp("torchrun")
    done = _torchrun(tmp_path, "whole", "train.checkpoint_format=sharded")
    assert done.returncode == 0, done.stderr[-3000:]
    start, _ = load_model("tiny-random", seed=0)
    final = _final_weights(tmp_path / "whole")
    assert not torch.equal(final["model.norm.weight"], start.model.norm.weight.detach())  # it trained
    return tmp_path / "whole"


def test_torchrun_rank_death_then_resume_reaches_the_same_weights(torchrun_run, tmp_path):
    died = _torchrun(tmp_path, "crash", "train.checkpoint_format=full", env={"MASA_TEST_DIE": "1:3"})
    assert died.returncode != 0
    assert (
        "ChildFailedError" in died.stderr and "exitcode  : 17" in died.stderr
    )  # torchrun names the dead rank
    run = tmp_path / "crash"
    assert (run / "checkpoints" / "step-2" / "model.safetensors").is_file() and not (run / "final").exists()
    assert [r["step"] for r in _rows(run / "metrics.jsonl")] == [1, 2]

    resumed = _torchrun(tmp_path, "crash", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["step"] for r in _rows(run / "metrics.jsonl")] == [1, 2, 3]
    _assert_same_final_weights(torchrun_run, run)
    _resume_in_one_process(run, tmp_path / "one")  # a full-state checkpoint of 2 ranks


def test_torchrun_sharded_checkpoint_resumes_exactly(torchrun_run, tmp_path):
    import shutil

    from torch.distributed.checkpoint import FileSystemReader

    checkpoint = torchrun_run / "checkpoints" / "step-2"
    shards = checkpoint / "dcp"
    assert sorted(p.name for p in shards.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    saved = FileSystemReader(shards).read_metadata().state_dict_metadata
    assert "model.model.norm.weight" in saved and "optimizer.state.model.norm.weight.exp_avg" in saved
    assert "model.lm_head.weight" not in saved  # tied to the embedding, which is saved once
    assert not list(checkpoint.glob("*.safetensors")) and (checkpoint / "config.json").is_file()
    assert "optimizer" not in torch.load(checkpoint / "trainer_state.pt", weights_only=False)

    run = tmp_path / "stopped"  # as if stopped right after its step-2 checkpoint
    shutil.copytree(torchrun_run, run)
    shutil.rmtree(run / "checkpoints" / "step-3")
    shutil.rmtree(run / "final")
    resumed = _torchrun(tmp_path, "stopped", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoints: sharded" in resumed.stdout
    assert [r["step"] for r in _rows(run / "metrics.jsonl")] == [1, 2, 3]
    _assert_same_final_weights(torchrun_run, run)
    _resume_in_one_process(torchrun_run, tmp_path / "one")  # DCP reshards 2 ranks' shards for one process


def _assert_same_final_weights(whole: Path, run: Path) -> None:
    expected, again = _final_weights(whole), _final_weights(run)
    for name, tensor in expected.items():
        assert torch.equal(again[name], tensor), name


def _resume_in_one_process(two_process_run: Path, run: Path) -> None:
    """A copy of a finished 2-process run, resumed from its step-2 checkpoint in this one process."""
    import shutil

    from masa.trainer import Trainer, load_run_config

    shutil.copytree(two_process_run, run)
    shutil.rmtree(run / "checkpoints" / "step-3")
    shutil.rmtree(run / "final")
    trainer = Trainer(load_run_config(run), run_dir=run, resume=True)
    assert trainer.step == 2 and not trainer.ranks.distributed
    state = trainer.learner.optimizer.state_dict()["state"]
    assert state and all(float(s["step"]) == 2 for s in state.values())  # AdamW moments carried over
    assert trainer.fit().steps_completed == 3
    assert [r["step"] for r in _rows(run / "metrics.jsonl")] == [1, 2, 3]


# ---------------------------------------------------------------- the embedded model under torchrun
def _convert_worker(rank, tmp_path):
    ranks = _join(rank, tmp_path)
    import masa.models
    from masa.models import SMOLLM2

    # The tiny model stands in for the de-quantized GGUF (half a minute of work, not the part under test).
    tiny = load_model("tiny-random")
    masa.models.plain_model_from_gguf = lambda gguf: tiny
    os.environ["MASA_CACHE"] = str(tmp_path / "cache")
    model, _ = load_model(SMOLLM2)  # its first use: every rank converts at once
    torch.save(model.model.norm.weight.detach(), tmp_path / f"norm-{ranks.rank}.pt")
    dist.destroy_process_group()


def test_every_rank_converts_the_embedded_model_at_once(tmp_path):
    """transformers' save_pretrained writes nothing on rank 1 once torch.distributed is up; the cache must
    still hold a whole model, whichever rank finishes first."""
    _spawn(_convert_worker, tmp_path)
    (folder,) = (tmp_path / "cache" / "models").iterdir()
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert torch.equal(torch.load(tmp_path / "norm-0.pt"), torch.load(tmp_path / "norm-1.pt"))


def test_the_process_group_closes_even_when_the_engine_fails_to(monkeypatch):
    import masa.trainer

    closed = []

    class FailingEngine:
        def close(self):
            raise RuntimeError("engine shutdown failed")

    class FakeTrainer:
        def __init__(self, *args, **kwargs):
            self.engine = FailingEngine()
            self.ranks = Ranks(rank=0, world=2)

        def fit(self):
            return "done"

    monkeypatch.setattr(masa.trainer, "Trainer", FakeTrainer)
    monkeypatch.setattr(masa.trainer, "close_ranks", closed.append)
    with pytest.raises(RuntimeError, match="engine shutdown failed"):
        masa.trainer.train(load_config("tiny"))
    assert closed == [Ranks(rank=0, world=2)]
