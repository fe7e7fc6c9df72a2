"""The training side of the policy: parameters (FSDP2-sharded over ranks), optimiser, schedule and updates."""

from __future__ import annotations

import copy
import random
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from masa.checkpoint import (
    SHARDS_DIR,
    is_sharded,
    save_checkpoint,
    save_model_folder,
    save_sharded_checkpoint,
    writes_sharded,
)
from masa.config import Config, ConfigError, LoraConfig, meta_setting
from masa.distributed import SINGLE_PROCESS, Ranks
from masa.update import TrainSequence, UpdateSettings, honours_shared_layout, policy_update

# Sharded checkpoints hold the trainable parameters only (with LoRA the adapter): loading them leaves the
# frozen ones as the base model has them.
_SHARDED = StateDictOptions(strict=False)


class Learner:
    """Owns the policy being optimised and everything about how it is optimised.

    The trainer asks it for an optimiser step (``update``), for the weights a rollout engine should
    sample with (``generation_model``, ``full_weights``) and for checkpoints (``save_checkpoint``, with
    ``state_dict`` the part of them the trainer's state carries).
    In one process the policy is the model itself and the engine shares it. Under torchrun the policy is
    sharded with FSDP2 (``fully_shard`` per decoder layer, then the root); generation then runs on a
    plain replica that is refreshed from the shards after every optimiser step, one parameter at a time,
    because sampling different prompts on different ranks cannot run in lockstep the way FSDP needs.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        config: Config,
        *,
        pad_id: int,
        autocast_dtype: torch.dtype | None,
        ranks: Ranks = SINGLE_PROCESS,
        resume_from: Path | None = None,
        reference: PreTrainedModel | None = None,
    ):
        """``reference`` is the KL anchor (with ``algo.kl_coef`` > 0) when ``model`` is not the model the
        run started from (a full checkpoint's weights, on resume); by default ``model`` itself is."""
        a, mc = config.algo, config.meta
        self.lora = config.model.lora
        self.ranks = ranks
        self.pad_id = pad_id
        self.autocast_dtype = autocast_dtype
        self.settings = UpdateSettings(
            clip_low=a.clip_low,
            clip_high=a.clip_high,
            kl_coef=a.kl_coef,
            ppo_epochs=a.ppo_epochs,
            mini_batches=a.mini_batches,
            micro_batch_sequences=a.micro_batch_sequences,
            micro_batch_tokens=a.micro_batch_tokens,
            grad_clip=a.grad_clip,
            prefix_sharing=a.prefix_sharing,
            off_policy=config.rollout.engine != "hf" or bool(config.rollout.importance_sampling),
            importance_sampling_cap=config.rollout.importance_sampling_cap
            if _importance_sampling(config)
            else None,
            kind_weights={"solution": 1.0, "meta": mc.loss_weight, "expert": mc.expert_weight},
            aggregation=mc.loss_aggregation,
            auxiliary_alone=meta_setting(config, "steps_without_solution_signal") == "train",
        )
        if config.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        if a.prefix_sharing and not honours_shared_layout(model):
            raise ConfigError(
                f"algo.prefix_sharing: {type(model).__name__} ignores custom 4D attention masks, which the "
                "prefix-shared update needs; set algo.prefix_sharing=false"
            )
        self.ref_model = (
            (reference or copy.deepcopy(model)).eval().requires_grad_(False) if a.kl_coef > 0 else None
        )
        self._replica: PreTrainedModel | None = None
        if ranks.distributed:
            self._replica = copy.deepcopy(model).eval().requires_grad_(False)
        shards = resume_from / SHARDS_DIR if resume_from is not None and is_sharded(resume_from) else None
        if self.lora.rank:
            model = _with_adapter(model, self.lora, None if shards else resume_from)
        # What a full checkpoint gathers: the trainable weights and AdamW's two moments (of their dtype).
        self.checkpoint_bytes = 3 * sum(
            p.numel() * p.element_size() for p in model.parameters() if p.requires_grad
        )
        self.sharded_checkpoints = writes_sharded(
            config.train, distributed=ranks.distributed, state_bytes=self.checkpoint_bytes
        )
        if ranks.distributed:
            _shard(model, config, autocast_dtype)
            if self.ref_model is not None:
                _shard(self.ref_model, config, autocast_dtype)
        self.model = model
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            trainable, lr=a.lr, betas=tuple(a.betas), weight_decay=a.weight_decay
        )
        warmup = a.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)) if warmup else 1.0
        )
        if shards is not None:
            self._load_shards(shards)

    # ------------------------------------------------------------------------------------ updates
    def update(
        self, sequences: Sequence[TrainSequence], rng: random.Random, *, grad_stats: bool = False
    ) -> dict[str, float]:
        """One optimiser step on the step's whole batch (every rank passes the same sequences)."""
        log = policy_update(
            self.model,
            self.optimizer,
            self.scheduler,
            sequences,
            self.settings,
            pad_id=self.pad_id,
            autocast_dtype=self.autocast_dtype,
            ref_model=self.ref_model,
            rng=rng,
            grad_stats=grad_stats,
            ranks=self.ranks,
        )
        self._refresh_replica()
        return log

    # ------------------------------------------------------------------------------------ weights
    @property
    def generation_model(self) -> PreTrainedModel:
        """A plain (unsharded) module with the current weights, for a rollout engine to sample with."""
        return self._replica if self._replica is not None else self.model

    def full_weights(self, remove_duplicate: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        """The current weights by the base model's names, gathered one parameter at a time (every rank
        must iterate). With LoRA these are the merged weights, ``W + (alpha / r) B A``. With
        ``remove_duplicate=False`` a tied weight comes under each of its names."""
        if not self.lora.rank:
            for name, param in self.model.named_parameters(remove_duplicate=remove_duplicate):
                yield name, _full(param.detach())
            return
        base = self.model.get_base_model()
        for name, param in base.named_parameters(remove_duplicate=remove_duplicate):
            if ".lora_" in name:
                continue
            tensor = _full(param.detach())
            if name.endswith(".base_layer.weight"):
                layer = base.get_submodule(name.removesuffix(".base_layer.weight"))
                lora_a = _full(layer.lora_A["default"].weight.detach())
                lora_b = _full(layer.lora_B["default"].weight.detach())
                tensor = tensor + (lora_b @ lora_a * layer.scaling["default"]).to(tensor.dtype)
            yield name.replace(".base_layer", ""), tensor

    def _refresh_replica(self) -> None:
        if self._replica is None:
            return
        targets = dict(self._replica.named_parameters())
        with torch.no_grad():
            for name, tensor in self.full_weights():
                targets[name].copy_(tensor)

    # ------------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Schedule state and, unless checkpoints are sharded (their shards hold it), the optimiser state
        keyed by parameter name so it loads at any world size.

        Collective under torchrun: every rank calls it; the full state comes back on every rank.
        """
        state = {"scheduler": self.scheduler.state_dict()}
        if not self.sharded_checkpoints:
            state["optimizer"] = self._optimizer_state(self.optimizer)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A full checkpoint's optimiser state (a sharded one's was loaded with its weights) and schedule."""
        if state.get("optimizer") is not None:
            set_optimizer_state_dict(
                self.model, self.optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True)
            )
        self.scheduler.load_state_dict(state["scheduler"])

    def save_checkpoint(
        self,
        checkpoints_dir: Path,
        step: int,
        tokenizer: PreTrainedTokenizerBase,
        trainer_state: dict[str, Any],
        *,
        keep: int,
        extra_files: Mapping[str, str] | None = None,
    ) -> Path:
        """Write ``step-N`` (collective). Full: rank 0 writes the gathered weights as a Hugging Face folder
        (with LoRA the adapter as a peft folder) while the others wait. Sharded: every rank writes its
        shards of the weights (with LoRA the adapter) and optimiser state with torch.distributed.checkpoint,
        and rank 0 the rest."""
        if self.sharded_checkpoints:
            return save_sharded_checkpoint(
                checkpoints_dir,
                step,
                self._write_shards,
                self.generation_model.config,
                tokenizer,
                trainer_state,
                keep=keep,
                ranks=self.ranks,
                extra_files=extra_files,
            )
        weights = _Weights(self.model, self._adapter_state()) if self.lora.rank else self.generation_model
        if self.ranks.is_main:
            save_checkpoint(
                checkpoints_dir, step, weights, tokenizer, trainer_state, keep=keep, extra_files=extra_files
            )
        self.ranks.barrier()
        return checkpoints_dir / f"step-{step}"

    def save_final(
        self, target: Path, tokenizer: PreTrainedTokenizerBase, extra_files: Mapping[str, str] | None = None
    ) -> Path:
        """The trained policy as a plain Hugging Face folder (with LoRA: merged, or the adapter alone if
        ``model.lora.final=adapter``), written aside and renamed into place with ``extra_files``."""
        weights: Any = self.generation_model
        if self.lora.rank and self.lora.final == "adapter":
            weights = _Weights(self.model, self._adapter_state())
        elif self.lora.rank and self._replica is None:
            weights = _Weights(self.model.get_base_model(), dict(self.full_weights()))
        # (Under torchrun the replica already holds the merged weights.)
        if self.ranks.is_main:
            save_model_folder(target, weights, tokenizer, extra_files)
        self.ranks.barrier()
        return target

    def _write_shards(self, folder: Path) -> None:
        state = {"model": self._trainable_shards()}
        if self.optimizer.state:  # see _optimizer_state
            state["optimizer"] = get_optimizer_state_dict(self.model, self.optimizer, options=_SHARDED)
        dcp.save(state, storage_writer=dcp.FileSystemWriter(folder))

    def _load_shards(self, folder: Path) -> None:
        """Weights and optimiser state of a sharded checkpoint; DCP reshards them to this run's world size
        (one process included)."""
        reader = dcp.FileSystemReader(folder)
        state = {"model": self._trainable_shards()}
        # A checkpoint saved before the first optimiser step has no optimiser state.
        if any(key.startswith("optimizer.") for key in reader.read_metadata().state_dict_metadata):
            state["optimizer"] = get_optimizer_state_dict(self.model, self.optimizer, options=_SHARDED)
        with warnings.catch_warnings():
            # Loading in one process, DCP says it assumes one process: that is what is meant.
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
            dcp.load(state, storage_reader=reader)
        set_model_state_dict(self.model, state["model"], options=_SHARDED)
        if "optimizer" in state:
            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=_SHARDED)
        self._refresh_replica()

    def _trainable_shards(self) -> dict[str, Any]:
        """This rank's shards of the trainable parameters, by name. torch lists a tied weight under each
        of its names (and the frozen ones too); once is enough, and the frozen ones come from the base
        model."""
        trainable = {name for name, p in self.model.named_parameters() if p.requires_grad}
        state = get_model_state_dict(self.model, options=_SHARDED)
        if trainable - state.keys():  # names torch rewrote: saving would silently skip these weights
            raise RuntimeError(f"parameters missing from the model's state dict: {trainable - state.keys()}")
        return {name: tensor for name, tensor in state.items() if name in trainable}

    def _adapter_state(self) -> dict[str, torch.Tensor]:
        """The LoRA parameters, gathered (collective under torchrun)."""
        return {name: _full(p.detach()) for name, p in self.model.named_parameters() if p.requires_grad}

    def _optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        # An optimiser that has not stepped yet has nothing to save; asking torch for its state anyway
        # would initialise it with a zero-gradient step, which counts in Adam's bias correction.
        if not optimizer.state:
            return None
        return get_optimizer_state_dict(self.model, optimizer, options=StateDictOptions(full_state_dict=True))


class _Weights:
    """A model to save with given tensors: gathered shards, an adapter alone, or merged LoRA weights."""

    def __init__(self, model: PreTrainedModel, state_dict: dict[str, torch.Tensor]):
        self.model = model
        self.state_dict = state_dict

    def save_pretrained(self, path: Path) -> None:
        self.model.save_pretrained(path, state_dict=self.state_dict)


def _importance_sampling(config: Config) -> bool:
    """On by default when the sampler is not the policy module itself."""
    r = config.rollout
    return r.engine != "hf" if r.importance_sampling is None else r.importance_sampling


def weights_source(config: Config, resume_from: Path | None) -> str:
    """Where the policy's weights start: a full checkpoint's weights, or the base model when the learner
    loads the checkpoint's on top (the adapter of a LoRA checkpoint, the shards of a sharded one)."""
    if resume_from is None or config.model.lora.rank or is_sharded(resume_from):
        return config.model.name
    return str(resume_from)


def _with_adapter(model: PreTrainedModel, lora: LoraConfig, resume_from: Path | None) -> PreTrainedModel:
    try:
        from peft import LoraConfig as PeftLoraConfig
        from peft import PeftModel, get_peft_model
    except ImportError as exc:
        raise ImportError("model.lora.rank > 0 needs peft: pip install 'masa[lora]'") from exc
    if resume_from is not None:
        return PeftModel.from_pretrained(model, str(resume_from), is_trainable=True)
    # No dropout: the first update's importance ratio must be exactly 1 and the run reproducible.
    settings = PeftLoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, target_modules=list(lora.target_modules), lora_dropout=0.0
    )
    return get_peft_model(model, settings)


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _shard(model: PreTrainedModel, config: Config, autocast_dtype: torch.dtype | None) -> None:
    """FSDP2: each decoder layer its own unit (gathered only while it runs), then the root for the rest."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    options: dict[str, Any] = {}
    device = next(model.parameters()).device
    if device.type == "cuda" and autocast_dtype == torch.bfloat16:
        # bf16 parameters for compute; gradients reduced and the optimiser stepping in fp32.
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if config.model.cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy()
    layer_classes = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in layer_classes]
    if not layers:
        raise ValueError(
            f"cannot shard {type(model).__name__}: it names no decoder-layer class (_no_split_modules)"
        )
    for layer in layers:
        fully_shard(layer, **options)
    fully_shard(model, **options)
