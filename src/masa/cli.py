"""The `masa` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from masa.config import PRESETS, ConfigError, apply_overrides, config_from_dict, describe_options, load_config


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model with GRPO, MASA or MASA-efficient",
        description=(
            "Train with a preset, an optional YAML file and dotted overrides, applied in that order.\n"
            "Examples:\n"
            "  masa train                                  # embedded SmolLM2 on the arithmetic task, CPU\n"
            "  masa train algo=masa rollout.n=8 algo.lr=1e-6\n"
            "  masa train --config my.yaml model.name=Qwen/Qwen2.5-0.5B-Instruct data.train=train.parquet\n"
            "  masa train --resume runs/grpo-20260101-120000"
        ),
        epilog="options (section.key=default {allowed values}):\n" + describe_options(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    p.add_argument("--preset", default="smollm2-arith", choices=PRESETS, help="starting configuration")
    p.add_argument("--config", type=Path, help="YAML file with config sections")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run from its latest checkpoint")


def _run_train(args: argparse.Namespace) -> int:
    from masa.trainer import load_run_config, train

    if args.resume is not None:
        if args.config is not None:
            raise ConfigError("--resume keeps the run's own config; pass changes as overrides, not --config")
        # Overrides may extend a resumed run, e.g. train.steps=200.
        config = config_from_dict(apply_overrides(load_run_config(args.resume).to_dict(), args.overrides))
        result = train(config, run_dir=args.resume, resume=True)
    else:
        config = load_config(args.preset, args.config, args.overrides)
        run_dir = Path(config.train.output_dir) / config.train.run_name if config.train.run_name else None
        result = train(config, run_dir=run_dir)
    return 130 if result.interrupted else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="masa", description="MASA: meta-awareness via self-alignment RL")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    args = parser.parse_args(argv)
    console = Console()
    try:
        if args.command == "train":
            return _run_train(args)
    except (ConfigError, FileNotFoundError, FileExistsError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
