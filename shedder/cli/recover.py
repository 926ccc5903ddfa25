"""CLI: ``recover`` fine-tunes a pruned model (LoRA or full) and measures what it won back.

``python -m shedder recover --model DIR --data wiki --method lora --steps 200 --out DIR`` ; running the
same command again continues an interrupted run from its last checkpoint.
"""
from __future__ import annotations

import argparse
import json

from ..paths import check_output_dir
from .arg_types import NON_NEGATIVE, POSITIVE, SEED, SEQ_LEN, real


def register(subparsers, add_model_args) -> None:
    parser = subparsers.add_parser("recover", help="recovery tuning (LoRA or full) of a pruned model, measured "
                                   "before and after on held-out text",
                                   description="Fine-tune a pruned model and measure what it wins back. With "
                                   "--dtype auto the weights train in float32 (bfloat16 autocast on a GPU) and "
                                   "are saved in the input checkpoint's dtype. Re-run to resume.")
    add_model_args(parser)
    train = parser.add_argument_group("training")
    train.add_argument("--data", default="wiki", help="training text: wiki (the training split, default), a .txt "
                       "path, or wikitext2 / c4 / alpaca (online); wiki-test is held out and refused")
    train.add_argument("--method", choices=["lora", "full"], default="lora")
    train.add_argument("--steps", type=POSITIVE, default=200)
    train.add_argument("--lr", type=real(0, above=True), default=None, help="peak learning rate (default 5e-4 LoRA, 5e-5 full)")
    train.add_argument("--warmup", type=NON_NEGATIVE, default=None, help="linear warm-up steps (default 5%% of --steps)")
    train.add_argument("--schedule", choices=["cosine", "linear", "constant"], default="cosine")
    train.add_argument("--weight-decay", type=real(0), default=0.0)
    train.add_argument("--grad-clip", type=real(0, above=True), default=1.0)
    train.add_argument("--batch-size", type=POSITIVE, default=8, help="windows per step")
    train.add_argument("--seq-len", type=SEQ_LEN, default=512, help="tokens per window")
    train.add_argument("--seed", type=SEED, default=0)
    train.add_argument("--checkpoint-every", type=NON_NEGATIVE, default=50, help="steps between checkpoints (0: only the last)")
    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--rank", type=POSITIVE, default=16)
    lora.add_argument("--alpha", type=real(0, above=True), default=32.0)
    lora.add_argument("--dropout", type=real(0, 1, below=True), default=0.05)
    lora.add_argument("--target-modules", default=None, help="comma-separated projection names (default per "
                      "family: in_proj,out_proj of Mamba mixers, q/k/v/o_proj, gate/up/down_proj)")
    measure = parser.add_argument_group("measuring (held-out wiki-test)")
    measure.add_argument("--eval-tokens", type=POSITIVE, default=None, help="held-out tokens (default: all of wiki-test)")
    measure.add_argument("--eval-seq-len", type=SEQ_LEN, default=None, help="window length (default: --seq-len)")
    measure.add_argument("--eval-batch-size", type=POSITIVE, default=8)
    measure.add_argument("--tasks", default=None, help="zero-shot tasks too (comma-separated lm-eval names, or all)")
    measure.add_argument("--limit", type=POSITIVE, default=None, help="documents per task, drawn with --limit-seed")
    measure.add_argument("--limit-seed", type=SEED, default=0)
    measure.add_argument("--dense", default=None, help="the unpruned model, for the share of the loss recovered "
                         "(default: found from the folder's plan.json when it is a zoo model)")
    parser.add_argument("--out", required=True, help="folder for the recovered model (re-run to resume)")
    parser.add_argument("--json", action="store_true", help="print recovery.json instead of a table")
    parser.set_defaults(run=_recover)


def _settings(args: argparse.Namespace):
    from ..measurement.tasks import parse_task_list
    from ..recovery.recover import Evaluation, RecoverySettings

    targets = tuple(t.strip() for t in args.target_modules.split(",") if t.strip()) if args.target_modules else None
    settings = RecoverySettings(
        method=args.method, data=args.data, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
        seq_len=args.seq_len, seed=args.seed, warmup=args.warmup, schedule=args.schedule,
        weight_decay=args.weight_decay, grad_clip=args.grad_clip, rank=args.rank, alpha=args.alpha,
        dropout=args.dropout, target_modules=targets, checkpoint_every=args.checkpoint_every,
    )
    evaluation = Evaluation(tokens=args.eval_tokens, seq_len=args.eval_seq_len or args.seq_len,
                            batch_size=args.eval_batch_size, tasks=tuple(parse_task_list(args.tasks)) if args.tasks else (),
                            limit=args.limit, seed=args.limit_seed)
    return settings, evaluation


def _recover(args: argparse.Namespace) -> int:
    from ..recovery.recover import recover
    from . import progress_bar

    settings, evaluation = _settings(args)
    check_output_dir(args.out)
    bars: dict = {}

    def on_step(record: dict, total: int) -> None:
        bar = bars.get("train") or bars.setdefault("train", progress_bar(total, "training", args.json))
        bar.n = record["step"] - 1
        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", refresh=False)
        bar.update(1)

    def on_measure(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage) or bars.setdefault(stage, progress_bar(total, stage, args.json))
        bar.update(done - bar.n)

    try:
        result = recover(args.model, args.out, settings, evaluation, args.dense, args.device, args.dtype,
                         args.trust_remote_code, on_step, on_measure)
    finally:
        for bar in bars.values():
            bar.close()
    if args.json:
        print(json.dumps(result.record, indent=1))
        return 0
    print(summary_table(result.record))
    print(("already finished: " if result.already_done else "wrote ") + str(result.out_dir))
    return 0


def summary_table(record: dict) -> str:
    """Perplexity, bits per byte and zero-shot average of dense, pruned and recovered, and the share won back."""
    lines = [f"{'model':<12}{'perplexity':>12}{'bits/byte':>11}{'zero-shot':>11}"]
    for name in ("dense", "pruned", "recovered"):
        metrics = record["metrics"].get(name)
        if metrics is None:
            continue
        held = metrics["held_out"]
        accuracy = (metrics.get("accuracy") or {}).get("average")
        lines.append(f"{name:<12}{held['ppl']:>12.3f}{held['bpb']:>11.4f}"
                     f"{'-' if accuracy is None else f'{accuracy:.4f}':>11}")
    share = record["recovered_share"]
    if share["bpb"] is None:
        lines.append("share of the pruning loss recovered: needs a dense reference (--dense)")
    else:
        text = f"share of the pruning loss recovered: {share['bpb']:.1%} (bits per byte)"
        if share.get("zero_shot_average") is not None:
            text += f", {share['zero_shot_average']:.1%} (zero-shot average)"
        lines.append(text)
    training = record["training"]
    lines.append(f"training: {training['steps']} steps, {training['tokens']:,} tokens, {training['seconds']:.0f} s, "
                 f"loss {training['first_loss']:.4f} -> {training['final_loss']:.4f}")
    return "\n".join(lines)
