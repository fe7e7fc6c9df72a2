import pytest

from masa.config import ConfigError, load_config


def test_default_preset_is_the_embedded_model_on_arithmetic():
    cfg = load_config()
    assert cfg.model.name == "smollm2-135m-instruct"
    assert cfg.data.train == "arithmetic"
    assert cfg.algo.clip_low == 0.2 and cfg.algo.clip_high == 0.28


def test_dotted_overrides_and_section_shorthand():
    cfg = load_config("tiny", overrides=["algo.lr=1e-6", "rollout.n=8", "algo=grpo", "data.eval=null"])
    assert cfg.algo.lr == 1e-6
    assert cfg.rollout.n == 8
    assert cfg.data.eval is None


def test_yaml_file_is_applied_between_preset_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rollout:\n  n: 6\n  temperature: 0.8\n")
    cfg = load_config("tiny", path, ["rollout.n=5"])
    assert cfg.rollout.n == 5 and cfg.rollout.temperature == 0.8


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("algo.lrr=1", "unknown key 'algo.lrr'; allowed in algo:"),
        ("bogus.x=1", "unknown section 'bogus'"),
        ("algo.name=ppo", "allowed values: grpo, masa, masa-efficient"),
        ("rollout.n=1", "rollout.n=1 is not valid: must be >= 2 (algo.name=grpo compares rollouts"),
        ("rollout.n=two", "rollout.n must be an integer"),
        ("model.precision=fp8", "allowed values: auto, fp32, bf16"),
        ("train.checkpoint_format=zip", "allowed values: auto, full, sharded"),
        (
            "train.sharded_checkpoint_above_gb=-1",
            "train.sharded_checkpoint_above_gb=-1.0 is not valid: must be >= 0",
        ),
        ("train.tensorboard=maybe", "train.tensorboard must be true or false"),
        ("rollout.block_size=24", "rollout.block_size=24 is not valid: must be null or a multiple of 16"),
        ("noequals", "must look like section.key=value"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, message):
    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")
    ):
        load_config("tiny", overrides=[override])


def test_groups_of_one_are_rejected_for_the_meta_path_only():
    with pytest.raises(ConfigError, match=r"meta\.n=1 is not valid: must be >= 2 or null \(algo\.name=masa"):
        load_config("tiny", overrides=["algo=masa", "meta.n=1"])
    assert load_config("tiny", overrides=["algo=grpo", "meta.n=1"]).meta.n == 1


def test_meta_rollouts_default_by_algorithm_and_an_explicit_count_wins():
    from masa.config import meta_rollouts

    assert meta_rollouts(load_config("tiny", overrides=["algo=masa"])) == 2
    # MASA-efficient's gate reads the group's predictions, and it was measured at 4.
    assert meta_rollouts(load_config("tiny", overrides=["algo=masa-efficient"])) == 4
    for algo in ("masa", "masa-efficient"):
        assert meta_rollouts(load_config("tiny", overrides=[f"algo={algo}", "meta.n=3"])) == 3
    assert meta_rollouts(load_config("tiny", overrides=["algo=masa", "meta.preset=paper"])) == 8


def test_missing_or_malformed_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config("tiny", tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config("tiny", bad)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="allowed: smollm2-arith, tiny"):
        load_config("huge")


def test_paper_preset_restores_the_papers_formulation_and_explicit_keys_win():
    from masa.config import load_config

    new = load_config("tiny")
    paper = load_config("tiny", overrides=["meta.preset=paper"])
    assert (new.meta.loss_aggregation, new.meta.pass_rate_reward, new.efficient.switch) == (
        "per_kind",
        "brier",
        "calibration",
    )
    assert (paper.meta.loss_aggregation, paper.meta.loss_weight, paper.meta.pass_rate_reward) == (
        "joint",
        1.0,
        "exp",
    )
    assert paper.meta.scale_advantages and not paper.efficient.grade_cutoff
    assert paper.efficient.switch == "steps"
    mixed = load_config("tiny", overrides=["meta.preset=paper", "meta.pass_rate_reward=log"])
    assert mixed.meta.pass_rate_reward == "log" and mixed.meta.loss_aggregation == "joint"


def test_default_meta_path_is_json_only_by_algorithm_and_the_paper_preset_restores_reasoning():
    from masa.config import config_from_dict, load_config, meta_prompt_style, meta_setting

    for preset in ("tiny", "smollm2-arith"):
        default = load_config(preset).meta
        assert (default.prompt, default.reasoning) == (None, False)
        assert (default.n, default.expert_source) == (None, "step")
    # The terse prompt and skipped auxiliary-only steps under algo=masa; masa-efficient's gate was measured
    # on the compact prompt and the paper's update.
    by_algo = {}
    for algo in ("masa", "masa-efficient"):
        config = load_config("tiny", overrides=[f"algo={algo}"])
        by_algo[algo] = (meta_prompt_style(config), meta_setting(config, "steps_without_solution_signal"))
    assert by_algo == {"masa": ("terse", "skip"), "masa-efficient": ("compact", "train")}
    for algo in ("masa", "masa-efficient"):
        explicit = load_config("tiny", overrides=[f"algo={algo}", "meta.prompt=paper"])
        assert meta_prompt_style(explicit) == "paper"
        paper_update = load_config("tiny", overrides=[f"algo={algo}", "meta.preset=paper"])
        assert meta_setting(paper_update, "steps_without_solution_signal") == "train"
        assert load_config(preset, overrides=["meta.preset=paper"]).meta.n == 8  # the preset file sets no M
    paper = load_config("tiny", overrides=["meta.preset=paper"]).meta
    assert (paper.prompt, paper.reasoning, paper.n) == ("paper", True, 8)
    # Keys set explicitly win over the preset, in overrides and in a plain dict alike.
    unreasoned = load_config("tiny", overrides=["meta.preset=paper", "meta.reasoning=false"]).meta
    assert (unreasoned.prompt, unreasoned.reasoning) == ("paper", False)
    compact = config_from_dict({"meta": {"preset": "paper", "prompt": "compact"}}).meta
    assert (compact.prompt, compact.reasoning, compact.loss_aggregation) == ("compact", True, "joint")
