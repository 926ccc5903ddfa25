"""Rewrite the guided tour's shipped results of a zoo model (zoo/NAME/tour.json): its sensitivity map of blocks,
SSMs, attention and MLP sub-blocks (those it has) and a short greedy search, on the dashboard's default evaluation
setting (see shedder/formats/tour.py).

    python scripts/make_tour.py demo-mamba2
    python scripts/make_tour.py demo-hybrid
"""
import argparse
import logging
import time

from shedder.formats.tour import make_tour, write_tour
from shedder.model.loading import ZOO_DIR, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", default="demo-mamba2", help="a zoo model")
    parser.add_argument("--steps", type=int, default=4, help="greedy search steps")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    folder = ZOO_DIR / args.name
    model, tokenizer = load_model(args.name)  # as the dashboard loads it
    start = time.perf_counter()
    tour = make_tour(model, tokenizer, folder, steps=args.steps, save_to_cache=False,
                     progress=lambda phase, done, total: print(f"\r{phase}: {done} of {total}", end="", flush=True))
    path = write_tour(tour, folder)
    print(f"\nwrote {path} in {time.perf_counter() - start:.1f} s: dense perplexity {tour['sensitivity']['base_ppl']:.4f}, "
          f"search " + ", ".join(f"{s['removed']['kind']}@{s['removed']['layer']} {s['ppl']:.3f}"
                                 for s in tour["search"]["steps"]))


if __name__ == "__main__":
    main()
