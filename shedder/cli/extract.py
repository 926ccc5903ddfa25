"""CLI: ``extract`` writes a physically smaller model without the plan's removed components; it loads
with stock transformers, or with ``trust_remote_code=True`` where the stock config cannot describe it."""
from __future__ import annotations

import argparse

from ..paths import check_output_dir
from . import add_plan_args, load_plan_for


def _extract(args: argparse.Namespace) -> int:
    from ..extraction.extract import extract
    from ..model.loading import load_model

    check_output_dir(args.out)
    model, tokenizer = load_model(args.model, args.dtype, args.device, args.trust_remote_code)
    plan = load_plan_for(model, args)
    result = extract(model, tokenizer, plan, args.out, allow_other_weights=args.allow_other_weights)
    saved = 1 - result.params_after / result.params_before
    print(f"extracted {len(result.removed)} removed components -> {result.out_dir}")
    print(f"parameters {result.params_before:,} -> {result.params_after:,} ({saved:.1%} fewer)")
    if result.needs_remote_code:
        print("load with AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True) (model code included; "
              "shedder not needed)")
    else:
        print("load with AutoModelForCausalLM.from_pretrained(DIR)")
    return 0


def register(subparsers, add_model_args) -> None:
    parser = subparsers.add_parser("extract", help="write a smaller model without the plan's removed components")
    add_model_args(parser)
    add_plan_args(parser, "plan JSON", required=True)
    parser.add_argument("--out", required=True, help="new (or empty) folder to write the smaller model to")
    parser.set_defaults(run=_extract)
