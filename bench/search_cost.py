"""Benchmark: the same Mamba-Shedder search, naive (every candidate recomputes the whole model over
all windows, as the reference code does) and optimised (prefix reuse + exact early stop), on the same
model and data. Prints both plans (they must be equal), the work ratio and the wall-time ratio.

    python bench/search_cost.py --model demo-mamba2 --targets block,ssm --steps 12 --tokens 16384 --seq-len 256
    python bench/search_cost.py --random-mamba2 24x768 --device cuda --steps 12 --tokens 65536 --seq-len 1024

``--random-mamba2 LAYERSxWIDTH`` builds a Mamba-2 with random weights (timing only: with random weights
candidates score alike, so early stopping saves less than on a trained model).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shedder.measurement.calibration import Windows, calibration_windows, cut_windows  # noqa: E402
from shedder.measurement.evaluator import EvalSettings  # noqa: E402
from shedder.measurement.perplexity import perplexity  # noqa: E402
from shedder.model.fused_norms import use_fused_norms  # noqa: E402
from shedder.model.loading import load_model, resolve_device, resolve_dtype  # noqa: E402
from shedder.removal.catalogue import Component  # noqa: E402
from shedder.searching.search import Stage, naive_search, search  # noqa: E402


def random_mamba2(shape: str, device: torch.device, dtype: torch.dtype):
    from transformers import Mamba2Config, Mamba2ForCausalLM

    layers, width = (int(x) for x in shape.lower().split("x"))
    config = Mamba2Config(vocab_size=50280, hidden_size=width, num_hidden_layers=layers, state_size=128,
                          expand=2, head_dim=64, num_heads=2 * width // 64, n_groups=1)
    torch.manual_seed(0)
    if device.type == "cuda":
        use_fused_norms()  # as for a model loaded onto a GPU (shedder.model.loading)
    return Mamba2ForCausalLM(config).to(device, dtype).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo-mamba2")
    parser.add_argument("--random-mamba2", help="LAYERSxWIDTH: a random-weight Mamba-2 instead of --model")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--targets", default="block,ssm")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--calib", default="wiki")
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--windows-per-forward", default="auto",
                        help="most windows in one forward of grouped candidates: auto (sized to memory) or numbers, "
                             "comma-separated: the optimised search runs once for each")
    parser.add_argument("--skip-naive", action="store_true", help="only the optimised search")
    parser.add_argument("--no-carry-over", action="store_true",
                        help="the optimised search without carrying candidates' states to the next step")
    parser.add_argument("--profile-steps", type=int, default=0,
                        help="also profile an optimised search of this many steps (GPU kernel time by family, and the "
                             "share of wall time the GPU is busy; first --windows-per-forward)")
    args = parser.parse_args()

    device = resolve_device(args.device)
    if args.random_mamba2:
        model = random_mamba2(args.random_mamba2, device, resolve_dtype(args.dtype, device))
        stream = torch.randint(0, model.config.vocab_size, (args.tokens,), generator=torch.Generator().manual_seed(0))
        windows = cut_windows(stream, args.seq_len, source="random tokens")
        name = f"random mamba2 {args.random_mamba2}"
    else:
        model, tokenizer = load_model(args.model, args.dtype, args.device)
        windows = calibration_windows(args.calib, tokenizer, args.seq_len, args.tokens)
        name = args.model
    stages = [Stage(tuple(args.targets.split(",")), args.steps)]

    # warm-up: kernels compile and autotune for this batch shape before anything is timed
    perplexity(model, Windows(windows.ids[: args.batch_size], windows.source, None), batch_size=args.batch_size)
    result = {
        "model": name, "params": sum(p.numel() for p in model.parameters()), "layers": model.config.num_hidden_layers,
        "device": str(device), "dtype": str(next(model.parameters()).dtype), "torch": torch.__version__,
        "machine": platform.machine(), "threads": torch.get_num_threads(),
        "windows": len(windows), "seq_len": windows.seq_len, "batch_size": args.batch_size,
        "targets": args.targets, "steps": args.steps, "carry_over": not args.no_carry_over,
    }
    def settings_for(per_forward: str) -> EvalSettings:
        return EvalSettings(batch_size=args.batch_size, carry_over=not args.no_carry_over,
                            windows_per_forward=None if per_forward == "auto" else int(per_forward))

    runs = []
    for per_forward in args.windows_per_forward.split(","):
        settings = settings_for(per_forward)
        sync(device)
        start = time.perf_counter()
        fast = search(model, windows, stages, settings=settings)
        sync(device)
        runs.append({"windows_per_forward": per_forward,
                     "plan": [str(Component.from_dict(c)) for c in fast["removed"]], "work": fast["work"],
                     "seconds": round(time.perf_counter() - start, 3),
                     "fully_evaluated": [s["evaluated_fully"] for s in fast["steps"]],
                     "work_per_step": [s["work"] for s in fast["steps"]],
                     "seconds_per_step": [round(s["seconds"], 3) for s in fast["steps"]],
                     "phase_seconds": [s.get("phase_seconds") for s in fast["steps"]],
                     "candidates": [len(s["candidates"]) for s in fast["steps"]]})
    result["optimised"] = runs[0]  # the first --windows-per-forward; every one in "optimised_runs"
    if len(runs) > 1:
        result["optimised_runs"] = runs
    if args.profile_steps:
        from flops import profile_evaluations  # flops imports this module: imported here, when asked for

        settings = settings_for(runs[0]["windows_per_forward"])
        profiled = [Stage(stages[0].targets, args.profile_steps)]
        result["profile"] = {"steps": args.profile_steps, **profile_evaluations(
            lambda: search(model, windows, profiled, settings=settings), device)}
    if not args.skip_naive:
        sync(device)
        start = time.perf_counter()
        naive_plan, naive_work = naive_search(model, windows, stages, batch_size=args.batch_size)
        sync(device)
        naive_seconds = time.perf_counter() - start
        result["naive"] = {"plan": [str(c) for c in naive_plan], "work": naive_work, "seconds": round(naive_seconds, 3)}
        result["plans_equal"] = all(result["naive"]["plan"] == run["plan"] for run in runs)
        for run in runs:
            run["time_ratio"] = round(naive_seconds / run["seconds"], 2)
        result["work_ratio"] = round(naive_work / result["optimised"]["work"], 2)
        result["time_ratio"] = runs[0]["time_ratio"]
    print(json.dumps(result, indent=1))
    if not args.skip_naive and not result["plans_equal"]:
        sys.exit("plans differ")


if __name__ == "__main__":
    main()
