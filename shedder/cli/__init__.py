"""Command line: ``python -m shedder <command> ...`` (the dashboard calls the same library functions).

This module holds ``main``, the arguments every command shares and ``inspect`` / ``perplexity``; the other
commands live in their own modules here (``search``: score, search, plan-convert; ``evaluate``: eval;
``extract``; ``bench``; ``recover``), each exposing ``register(subparsers, add_model_args)``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from ..errors import ShedderError
from .arg_types import POSITIVE, SEED, SEQ_LEN, OneLineParser, nonempty


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=nonempty, help="zoo name, local directory, or hub id (online)")
    parser.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ..., or balanced: the layers spread over all visible GPUs (a model too big for one)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow code shipped with the model to run (only for sources you trust)")
    parser.add_argument("--channel-group-size", type=POSITIVE, default=None,
                        help="MLP channels per mlp_channels group (default: 256, or 1/8 of small MLPs)")


def _inspect(args: argparse.Namespace) -> int:
    from ..model.loading import load_model
    from ..removal.catalogue import catalogue_of

    model, _ = load_model(args.model, args.dtype, args.device, args.trust_remote_code)
    catalogue = catalogue_of(model, args.channel_group_size)
    if args.json:
        print(json.dumps({
            "model_type": catalogue.model_type,
            "n_layers": catalogue.n_layers,
            "total_params": catalogue.total_params,
            "channel_group_size": catalogue.channel_group_size,
            "components": [{**e.component.to_dict(), "params": e.params} for e in catalogue],
        }, indent=1))
        return 0
    print(f"{args.model}: {catalogue.model_type}, {catalogue.n_layers} layers, {catalogue.total_params:,} parameters")
    print(f"{'kind':<14}{'count':>7}{'params':>16}  share")
    for kind, row in catalogue.summary().items():
        print(f"{kind:<14}{row['count']:>7}{row['params']:>16,}  {row['params'] / catalogue.total_params:6.1%}")
    print("\nper layer:")
    for layer in range(catalogue.n_layers):
        here = [e for e in catalogue if e.component.layer == layer]
        singles = ", ".join(f"{e.component.kind} ({e.params:,})" for e in here if e.component.index is None)
        groups: dict[str, int] = {}
        for e in here:
            if e.component.index is not None:
                groups[e.component.kind] = groups.get(e.component.kind, 0) + 1
        group_text = "".join(f", {n} x {kind}" for kind, n in groups.items())
        print(f"  {layer:>3}: {singles}{group_text}")
    return 0


def add_calibration_args(parser: argparse.ArgumentParser, default_tokens: int | None = None) -> None:
    parser.add_argument("--calib", default="wiki", help="wiki (offline default), wiki-test, a .txt path, "
                        "or wikitext2 / c4 / ptb / alpaca (online)")
    parser.add_argument("--tokens", type=POSITIVE, default=default_tokens,
                        help="calibration tokens" + ("" if default_tokens else " (default: all of the text)"))
    parser.add_argument("--seq-len", type=SEQ_LEN, default=512)
    parser.add_argument("--seed", type=SEED, default=None, help="sample windows with this seed instead of from the start")
    parser.add_argument("--batch-size", type=POSITIVE, default=8)


def windows_from_args(args: argparse.Namespace, tokenizer):
    from ..measurement.calibration import calibration_windows

    return calibration_windows(args.calib, tokenizer, args.seq_len, args.tokens, args.seed)


def add_plan_args(parser: argparse.ArgumentParser, help: str, required: bool = False) -> None:
    parser.add_argument("--plan", required=required, help=help + "; ours, or the reference code's pruning_config.json")
    parser.add_argument("--allow-other-weights", action="store_true",
                        help="apply a plan made for other weights of the same architecture (e.g. a plan searched "
                             "on a base model, applied to its fine-tune)")


def load_plan_for(model, args: argparse.Namespace):
    """The plan of ``--plan`` (ours or a reference config) checked against ``model``, or an empty plan. A
    reference config's mapping onto this model is said on stderr: that format names no model."""
    from ..formats.reference_format import plan_from_data
    from ..plan import Plan, read_plan_json

    grouping = Plan(channel_group_size=args.channel_group_size, channel_reorder=getattr(args, "channel_reorder", None))
    if not args.plan:
        return grouping
    plan, mapping = plan_from_data(read_plan_json(args.plan), model, grouping, args.allow_other_weights)
    if mapping is not None:
        print(f"warning: {args.plan} is a reference pruning config; that format records no model, so check that it "
              f"was made for this layout. Read as: {mapping}", file=sys.stderr)
    elif args.allow_other_weights and plan.fingerprint:
        if not plan.fits_weights(model):
            print(f"warning: {args.plan} was made for other weights (fingerprint {plan.fingerprint[:12]}); applied "
                  "as asked (--allow-other-weights).", file=sys.stderr)
    return plan


def progress_bar(total: int, desc: str, disable: bool = False):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="it", disable=disable or None)


def _ppl(args: argparse.Namespace) -> int:
    from ..measurement.perplexity import perplexity, require_finite
    from ..model.loading import load_model

    model, tokenizer = load_model(args.model, args.dtype, args.device, args.trust_remote_code)
    plan = load_plan_for(model, args)
    if not args.plan:
        plan.channel_group_size = args.channel_group_size
    windows = windows_from_args(args, tokenizer)
    with progress_bar(len(windows), "perplexity", args.json) as bar:
        result = perplexity(model, windows, plan, args.batch_size, progress=lambda done, total: bar.update(done - bar.n))
    require_finite(result, args.model)
    if args.json:
        print(json.dumps({"model": args.model, "calib": args.calib, "removed": len(plan.removed), **result.to_dict()}))
    else:
        print(f"perplexity {result.ppl:.4f}  ({result.n_windows} windows x {result.seq_len} tokens, "
              f"{result.n_predictions:,} predictions, {len(plan.removed)} components removed)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m shedder", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    inspect = sub.add_parser("inspect", help="list every removable component of a model")
    _add_model_args(inspect)
    inspect.add_argument("--json", action="store_true", help="print the full catalogue as JSON")
    inspect.set_defaults(run=_inspect)

    ppl = sub.add_parser("ppl", help="perplexity on calibration text, optionally with a plan applied")
    _add_model_args(ppl)
    add_plan_args(ppl, "plan JSON whose removals to apply")
    add_calibration_args(ppl)
    ppl.add_argument("--json", action="store_true")
    ppl.set_defaults(run=_ppl)
    for register in _extra_commands():
        register(sub, _add_model_args)
    return parser


def _extra_commands():
    """Sub-commands that live in their own modules: each exposes ``register(subparsers, add_model_args)``."""
    from importlib import import_module

    for name in COMMAND_MODULES:
        yield import_module(f".{name}", __package__).register


COMMAND_MODULES: list[str] = ["search", "evaluate", "extract", "bench", "recover"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.run(args)
    except ShedderError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)  # one line, whatever the message holds
        return 2
    except KeyboardInterrupt:
        print(f"stopped (Ctrl-C) during {args.command}; search and recover continue from their last saved step "
              "when the same command is run again.", file=sys.stderr)
        return 130
