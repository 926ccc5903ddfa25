"""CLI: ``score`` (leave-one-out sensitivity), ``search`` (the greedy Mamba-Shedder search) and
``plan-convert`` (our plan format <-> the reference code's pruning config)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ShedderError
from ..paths import check_output_dir, check_output_file
from . import add_calibration_args, add_plan_args, load_plan_for, progress_bar, windows_from_args
from .arg_types import POSITIVE, nonempty


def _kinds(text: str) -> list[str]:
    from ..kinds import KINDS

    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if not kinds:
        raise ShedderError(f"No component kinds given ({text!r}); choose from {', '.join(KINDS)}.")
    if unknown:
        raise ShedderError(f"Unknown kind(s) {unknown}; choose from {', '.join(KINDS)}.")
    return kinds


def _kinds_of_model(model, kinds: list[str], channel_group_size: int | None, warn: bool = True) -> list[str]:
    """Those of ``kinds`` the model has (a warning names the others); refused when it has none of them."""
    from ..removal.catalogue import catalogue_of

    found = catalogue_of(model, channel_group_size).present(kinds)
    missing = [k for k in kinds if k not in found]
    if missing and warn:
        print(f"warning: this {model.config.model_type} model has no {', '.join(missing)} components; "
              f"using {', '.join(found)}.", file=sys.stderr)
    return found


DEFAULT_SCORE_KINDS = "block,ssm,attn,mlp"


def add_executor_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="evaluate candidates in this process, or on Ray workers (same results)")
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster to join (auto, HOST:6379); default: RAY_ADDRESS, one running here, or a new one")
    parser.add_argument("--workers", type=POSITIVE, default=None, help="Ray workers, one model replica each (default 2)")
    parser.add_argument("--gpus-per-worker", type=POSITIVE, default=None,
                        help="GPUs per Ray worker; above 1 each replica's layers are spread over them (default 1)")


def load_with_executor(args: argparse.Namespace, split: str = "windows"):
    """(model, tokenizer, executor options). With Ray, this process's copy (for the catalogue, the
    fingerprint and proxies) is on the CPU, in the dtype the workers will use."""
    from ..model.loading import load_model

    if args.executor == "local":
        if args.ray_address or args.workers or args.gpus_per_worker:
            raise ShedderError("--ray-address, --workers and --gpus-per-worker need --executor ray.")
        return (*load_model(args.model, args.dtype, args.device, args.trust_remote_code), None)
    from ..searching.executor import RayOptions
    from ..searching.ray_executor import connect, worker_dtype

    connect(args.ray_address)
    options = RayOptions(model=args.model, device=args.device, trust_remote_code=args.trust_remote_code,
                         address=args.ray_address, workers=args.workers or 2, gpus_per_worker=args.gpus_per_worker or 1,
                         split=split)
    model, tokenizer = load_model(args.model, worker_dtype(args.dtype, args.device), "cpu", args.trust_remote_code)
    return model, tokenizer, options


def _score(args: argparse.Namespace) -> int:
    from ..kinds import GROUP_KINDS
    from ..measurement.evaluator import EvalSettings
    from ..measurement.perplexity import require_finite
    from ..searching.scoring import block_influence, proxy_agreement, score, weight_magnitude

    kinds = _kinds(DEFAULT_SCORE_KINDS if args.kinds is None else args.kinds)
    check_output_file(args.out)
    model, tokenizer, executor = load_with_executor(args, args.ray_split)
    base = load_plan_for(model, args)
    kinds = _kinds_of_model(model, kinds, base.channel_group_size, warn=args.kinds is not None)
    windows = windows_from_args(args, tokenizer)
    with progress_bar(0, "score") as bar:
        def tick(done, total):
            bar.total = total
            bar.update(done - bar.n)
        settings = EvalSettings(batch_size=args.batch_size)
        base_ppl, scores, work = score(model, windows, kinds, base, settings, tick, executor=executor)
    require_finite(base_ppl, args.model)
    proxies = {}
    if "block" in kinds:
        proxies["block_influence"] = block_influence(model, windows, base, args.batch_size)
    if set(GROUP_KINDS) & set(kinds):
        proxies["weight_magnitude"] = weight_magnitude(model, base)
    result = {
        "model": args.model, "calib": args.calib, "n_windows": len(windows), "seq_len": windows.seq_len,
        "base": [c.to_dict() for c in base.removed], "base_ppl": base_ppl, "work": work,
        "scores": [s.to_dict() for s in scores],
        "proxies": {name: [{**c.to_dict(), "value": v} for c, v in values.items()] for name, values in proxies.items()},
        "proxy_spearman": proxy_agreement(scores, proxies),
    }
    Path(args.out).expanduser().parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).expanduser().write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    best = sorted(scores, key=lambda s: s.ppl)[:5]
    print(f"base perplexity {base_ppl:.4f}; {len(scores)} components scored -> {args.out}")
    for s in best:
        print(f"  {str(s.component):<22} ppl {s.ppl:10.4f}  ({s.delta:+.4f})")
    return 0


def _search(args: argparse.Namespace) -> int:
    from ..measurement.evaluator import EvalSettings
    from ..plan import Plan
    from ..searching.search import Stage, parse_stages, search

    if args.stages and args.targets:
        raise ShedderError("Give either --targets/--steps or --stages, not both.")
    targets = "block" if args.targets is None else args.targets
    stages = parse_stages(args.stages) if args.stages else [Stage(tuple(_kinds(targets)), args.steps)]
    check_output_dir(args.out)
    model, tokenizer, executor = load_with_executor(args)
    stages = [Stage(tuple(_kinds_of_model(model, list(s.targets), args.channel_group_size)), s.steps) for s in stages]
    windows = windows_from_args(args, tokenizer)
    total = sum(s.steps for s in stages)
    with progress_bar(total, "search steps") as bar:
        def on_step(step):
            bar.update(1)
            bar.set_postfix_str(f"removed {step['removed']['kind']}@{step['removed']['layer']} ppl {step['ppl']:.3f}")
        try:
            grouping = Plan(channel_group_size=args.channel_group_size, channel_reorder=args.channel_reorder)
            record = search(model, windows, stages, args.out, EvalSettings(batch_size=args.batch_size), grouping,
                            early_stop=not args.no_early_stop, on_step=on_step, executor=executor)
        except KeyboardInterrupt:
            bar.close()
            print(f"stopped after step {_finished_steps(args.out)} of {total} (Ctrl-C); the finished steps are kept in "
                  f"{args.out}: re-run the same command to resume.", file=sys.stderr)
            return 130
    print(f"{len(record['removed'])} components removed; plan in {Path(args.out) / 'plan.json'} "
          f"(work: {record['work']:,} layer-token passes)")
    return 0


def _finished_steps(out: str) -> int:
    try:
        return len(json.loads((Path(out) / "log.json").read_text(encoding="utf-8"))["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _plan_convert(args: argparse.Namespace) -> int:
    from ..formats.reference_format import is_reference_config, plan_from_data, to_reference
    from ..model.loading import load_model
    from ..plan import Plan, read_plan_json

    out = check_output_file(args.out)
    data = read_plan_json(args.input)
    model, _ = load_model(args.model, args.dtype, args.device, args.trust_remote_code)
    grouping = Plan(channel_group_size=args.channel_group_size, channel_reorder=args.channel_reorder)
    plan, mapping = plan_from_data(data, model, grouping, args.allow_other_weights)
    out.parent.mkdir(parents=True, exist_ok=True)
    if is_reference_config(data):
        plan.save(out)
        print(f"reference config -> shedder plan with {len(plan.removed)} removals: {out}")
        print(f"warning: the reference format records no model; read as: {mapping}", file=sys.stderr)
    else:
        out.write_text(json.dumps(to_reference(plan, model), indent=4) + "\n", encoding="utf-8")
        print(f"shedder plan -> reference config: {out}")
    return 0


def register(sub, add_model_args) -> None:
    score = sub.add_parser("score", help="leave-one-out sensitivity of every component of some kinds")
    add_model_args(score)
    score.add_argument("--kinds", default=None, help=f"kinds to score (default: those of {DEFAULT_SCORE_KINDS} the model has)")
    add_plan_args(score, "base plan: score on top of these removals")
    score.add_argument("--channel-reorder", choices=["l1"], default=None)
    add_calibration_args(score, default_tokens=65536)
    add_executor_args(score)
    score.add_argument("--ray-split", choices=["windows", "candidates"], default="windows",
                       help="with Ray: each worker scores every component on its shard of the windows, "
                            "or whole components go to workers")
    score.add_argument("--out", required=True, help="JSON file for the scores")
    score.set_defaults(run=_score)

    search = sub.add_parser("search", help="the Mamba-Shedder greedy search (resumable)")
    add_model_args(search)
    search.add_argument("--targets", help="kinds to search over, e.g. block,ssm")
    search.add_argument("--steps", type=POSITIVE, default=4)
    search.add_argument("--stages", help="several stages, e.g. 'block,attn,mlp:3;mlp_channels:20;ssm:18'")
    search.add_argument("--channel-reorder", choices=["l1"], default=None,
                        help="group MLP channels by weight L1 norm first (the reference's --weight_reorder)")
    search.add_argument("--no-early-stop", action="store_true", help="score every candidate fully (same plan, more work)")
    add_calibration_args(search, default_tokens=65536)
    add_executor_args(search)
    search.add_argument("--out", required=True, type=nonempty, help="output directory (re-run the same command to resume)")
    search.set_defaults(run=_search)

    convert = sub.add_parser("plan-convert", help="convert between our plan format and the reference's config")
    add_model_args(convert)
    convert.add_argument("--in", dest="input", required=True)
    convert.add_argument("--channel-reorder", choices=["l1"], default=None)
    convert.add_argument("--allow-other-weights", action="store_true",
                         help="convert a plan made for other weights of the same architecture")
    convert.add_argument("--out", required=True)
    convert.set_defaults(run=_plan_convert)
