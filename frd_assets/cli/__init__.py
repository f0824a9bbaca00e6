"""`frd`: the standalone commands on files (standalone.py, never Dagster) and the platform's commands
(service.py: launch, status, demo). This module holds the parser and main.

The service module is imported only when one of its commands runs, so a standalone command never loads
Dagster or the GraphQL client, whatever those modules import.
"""

from __future__ import annotations

import argparse
import sys
import typing

from frd_assets.cli import standalone
from frd_assets.cli.common import EXIT_BAD_INPUT, EXIT_DELETED, bad_input, integer

__all__ = ["EXIT_BAD_INPUT", "EXIT_DELETED", "build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse with its refusals on one line, as every other refusal of `frd` (usage is in --help)."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def _service(command: str):
    """A service command, imported when it runs (see the module docstring)."""

    def run(args) -> int:
        from frd_assets.cli import service

        return getattr(service, command)(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    from frd_assets.core.evaluation.report import EvaluationConfig
    from frd_assets.core.generation.self_instruct import GenerationConfig
    from frd_assets.core.lora.export import CHECK_MAX_NEW_TOKENS, CHECK_PROMPTS
    from frd_assets.core.lora.search import SearchSettings
    from frd_assets.core.lora.trial import PRECISIONS, QUANTIZATIONS, TrainingConfig
    from frd_assets.core.retirement import RESTORE_FLAG
    from frd_assets.core.settings import DEMO_INSTRUCTIONS, DEMO_N_TRIALS, demo_n_trials, service_settings

    # Flag defaults are core's config defaults, so a flag and the run config it mirrors cannot drift apart.
    generation, training, evaluation = GenerationConfig(), TrainingConfig(), EvaluationConfig()

    # Defaults shown in --help come from the environment (core/settings.py), like the platform's own.
    service = service_settings()
    parser = _Parser(prog="frd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="model preparation").add_subparsers(dest="models_command", required=True)
    models.add_parser("prepare", help="convert the packaged SmolLM2-135M-Instruct once into the model cache")
    models.choices["prepare"].set_defaults(func=standalone.cmd_models_prepare)

    seed = sub.add_parser("seed", help="seed uploads").add_subparsers(dest="seed_command", required=True)
    up = seed.add_parser("upload", help="check a seed file and upload it to the seeds bucket; prints its UUID")
    up.add_argument("file")
    up.add_argument("--uuid", help="dataset UUID (default: a new one)")
    up.add_argument("--eval", metavar="EVAL_FILE",
                    help="tasks with reference outputs to evaluate the adapter on, instead of holding out "
                    "a share of the seed (stored beside the seed as <uuid>.eval.jsonl)")
    up.add_argument(RESTORE_FLAG, action="store_true",
                    help="upload under the --uuid of a retired dataset on purpose: removes its tombstone, and the "
                    "seed sensor gives it a partition again (see README, Retirement)")
    up.set_defaults(func=standalone.cmd_seed_upload)

    gen = sub.add_parser("generate", help="Self-Instruct generation from a seed file to a JSONL file, resumable")
    gen.add_argument("seed", help="seed file (Self-Instruct, Alpaca or chat; JSONL or JSON array)")
    gen.add_argument("--out", required=True, help="output JSONL file")
    gen.add_argument("--num", type=integer, default=generation.num_instructions,
                     help=f"instructions to keep (default {generation.num_instructions})")
    gen.add_argument("--prompts-per-round", type=integer, default=generation.prompts_per_round)
    gen.add_argument("--max-rounds", type=integer, default=generation.max_rounds)
    gen.add_argument("--checkpoint-every", type=integer, default=generation.checkpoint_every)
    gen.add_argument("--temperature", type=float, default=generation.temperature)
    gen.add_argument("--seed-value", type=integer, default=generation.seed, help="random seed")
    gen.add_argument("--language", default="",
                     help="ISO 639-1 code the teacher writes in, e.g. ru (default: the seed's majority language)")
    gen.add_argument("--teacher-model", help="model name or folder (default TEACHER_MODEL or the default model)")
    gen.add_argument("--teacher-url", help="OpenAI-compatible base URL; selects the HTTP teacher")
    gen.add_argument("--checkpoint", help="checkpoint file (default OUT.checkpoint.json)")
    gen.set_defaults(func=standalone.cmd_generate)

    val = sub.add_parser(
        "validate", help="run the validation gate on a JSONL file (exit 0 ready, 3 deleted, 2 bad input)"
    )
    val.add_argument("data", help="generated records, JSONL")
    val.add_argument("--seed", help="the seed file, for the novelty gates")
    val.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    val.add_argument("--config", help="JSON object of thresholds, e.g. '{\"max_self_bleu\": 50}'")
    val.add_argument("--decontaminate", action="append", metavar="FILE",
                     help="evaluation tasks (any seed format); records sharing a word n-gram with one are dropped "
                     "(repeatable)")
    val.add_argument("--judge-url", help="OpenAI-compatible base URL of a judge (default JUDGE_BASE_URL)")
    val.add_argument("--judge-model", help="judge model: served at --judge-url, else local (default JUDGE_MODEL)")
    val.set_defaults(func=standalone.cmd_validate)

    tune = sub.add_parser("tune", help="Optuna LoRA search on a JSONL file; re-run the same command to continue it")
    tune.add_argument("data", help="records with instruction, input, output (JSONL)")
    tune.add_argument("--base-model", help="model name or folder (default LORA_MODEL_NAME or the default model)")
    tune.add_argument("--trials", type=integer, help="finished trials the study should hold (default LORA_N_TRIALS)")
    tune.add_argument("--storage", help="Optuna storage URL (default OPTUNA_STORAGE or an SQLite file in .cache)")
    tune.add_argument("--study", help="study name (default from the data file's name and a hash of its content, the "
                      "base model and the training flags: other data starts a new study, the same data resumes)")
    tune.add_argument("--out", required=True, help="folder for the best adapter")
    tune.add_argument("--work-dir", help="folder for every trial's adapter (default in the cache)")
    tune.add_argument("--epochs", type=integer, default=training.epochs)
    tune.add_argument("--batch-size", type=integer, default=training.batch_size)
    tune.add_argument("--max-length", type=integer, default=training.max_length)
    tune.add_argument("--micro-batch-size", type=integer,
                      help="examples per forward pass; passes accumulate to --batch-size (default: all at once)")
    tune.add_argument("--precision", default=training.precision, choices=PRECISIONS,
                      help="base weights' dtype (default auto: bf16 on a GPU that has it, else fp32)")
    tune.add_argument("--quantization", default=training.quantization, choices=QUANTIZATIONS,
                      help="nf4: QLoRA's 4-bit base (default none)")
    tune.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                      help="recompute activations in the backward pass (default: on for a GPU, off on a CPU)")
    tune.add_argument("--pruner", default=SearchSettings().pruner, choices=typing.get_args(
        typing.get_type_hints(SearchSettings)["pruner"]))
    tune.add_argument("--workers", type=integer,
                      help="trial processes at once, each trial in a fresh one (default LORA_N_WORKERS or 1). With "
                      "GPUs worker i uses GPU i mod count; on CPU they split FRD_TORCH_THREADS (default all cores)")
    tune.set_defaults(func=standalone.cmd_tune)

    ev = sub.add_parser(
        "evaluate", help="base model versus base + adapter on tasks with reference answers (ROUGE-L, optional judge)"
    )
    ev.add_argument("adapter", help="adapter folder (adapter_config.json and adapter_model.safetensors)")
    ev.add_argument("--tasks", required=True, help="tasks with reference outputs: any seed format, JSONL or JSON array")
    ev.add_argument("--base-model", help="model name or folder (default: the adapter's, else LORA_MODEL_NAME)")
    ev.add_argument("--judge-url", help="OpenAI-compatible base URL of a judge (default JUDGE_BASE_URL)")
    ev.add_argument("--judge-model", help="judge model: served at --judge-url, else local (default JUDGE_MODEL)")
    ev.add_argument("--limit", type=integer, help="evaluate only the first N tasks")
    ev.add_argument("--max-new-tokens", type=integer, default=evaluation.max_new_tokens,
                    help=f"per answer (default {evaluation.max_new_tokens})")
    ev.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    ev.set_defaults(func=standalone.cmd_evaluate)

    exp = sub.add_parser(
        "export", help="merge an adapter into its base model and save it, checked against the adapter's greedy outputs"
    )
    exp.add_argument("adapter", help="adapter folder (adapter_config.json and adapter_model.safetensors)")
    exp.add_argument("--merge", action="store_true", required=True,
                     help="merge the LoRA weights into the base model's (the one export there is)")
    exp.add_argument("--out", required=True, help="new folder for the merged model and its tokenizer")
    exp.add_argument("--base-model", help="model name or folder (default: the adapter's, else LORA_MODEL_NAME)")
    exp.add_argument("--prompts", type=integer, default=CHECK_PROMPTS,
                     help=f"sample-seed instructions whose greedy outputs must match the adapter's "
                     f"(default {CHECK_PROMPTS})")
    exp.add_argument("--max-new-tokens", type=integer, default=CHECK_MAX_NEW_TOKENS,
                     help=f"per output compared (default {CHECK_MAX_NEW_TOKENS})")
    exp.set_defaults(func=standalone.cmd_export)

    dash = sub.add_parser("dashboard", help="optuna-dashboard on the study storage of lora_adapter and `frd tune`")
    dash.add_argument("--storage", help="Optuna storage URL (default OPTUNA_STORAGE or the SQLite file in .cache)")
    dash.add_argument("--host", default="127.0.0.1",
                      help="address to listen on (default 127.0.0.1: the dashboard has no login and can delete "
                      "studies, so listen elsewhere only behind an authenticating proxy)")
    dash.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    dash.set_defaults(func=standalone.cmd_dashboard)

    for name, helptext in (
        ("launch", "launch a materialization over the webserver's GraphQL API; prints the run id"),
        ("status", "per asset: latest materialization, run status, verdict (GraphQL)"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("uuid", help="dataset UUID")
        p.add_argument("--host", default=service.webserver_host, help="default DAGSTER_WEBSERVER_HOST or 127.0.0.1")
        p.add_argument("--port", type=int, default=service.webserver_port,
                       help="default DAGSTER_WEBSERVER_PORT or 3000")
        if name == "launch":
            p.add_argument("--assets", help="comma-separated assets (default: all five)")
            p.add_argument("--base-model", help="base model of lora_adapter for this run")
        p.set_defaults(func=_service("cmd_launch" if name == "launch" else "cmd_status"))

    retire = sub.add_parser(
        "retire", help="retire one dataset now: its partition goes, its objects and runs per FRD_RETENTION_OBJECTS "
        "and FRD_RETENTION_RUNS, and its uuid is refused for new uploads (needs the Dagster instance: DAGSTER_HOME)")
    retire.add_argument("uuid", help="dataset UUID")
    retire.add_argument("--yes", action="store_true", help="do not ask (without it: asks on a terminal, else refuses)")
    retire.set_defaults(func=_service("cmd_retire"))

    demo = sub.add_parser("demo", help="upload the sample seed and materialize the whole chain for it")
    demo.add_argument("--uuid", help="dataset UUID (default: a new one)")
    demo.add_argument("--instructions", type=integer, default=DEMO_INSTRUCTIONS,
                      help=f"instructions to generate (default {DEMO_INSTRUCTIONS})")
    demo.add_argument(
        "--trials",
        type=integer,
        default=demo_n_trials(),
        help=f"Optuna trials (default LORA_N_TRIALS or {DEMO_N_TRIALS})",
    )
    demo.set_defaults(func=_service("cmd_demo"))
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except ValueError as exc:  # a malformed setting, e.g. LORA_N_TRIALS=four: name it, no traceback
        return bad_input(exc)
    args = parser.parse_args(argv)
    return args.func(args)

