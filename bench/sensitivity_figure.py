"""Draw a ``shedder score`` result as the Sensitivity page draws it, into one PNG (for the README).

    python bench/sensitivity_figure.py bench/results/sensitivity_smollm2-hybrid.json \\
        docs/screenshots/smollm2-hybrid-sensitivity.png

The heatmaps are the dashboard's own (``app.figures``), on one shared colour scale: the perplexity change
relative to nothing removed, in %, on a log scale. The page is rendered by headless Chromium.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.figures import GROUP_COLUMNS, group_heatmap, percent_scale, sensitivity_heatmap, signed_log_percent  # noqa: E402

WHOLE_KINDS = ("block", "ssm", "attn", "mlp")


def figures(result: dict) -> list:
    base = result["base_ppl"]
    percents = {(s["kind"], s["layer"], s.get("index")): 100 * s["delta"] / base for s in result["scores"]}
    scale = percent_scale(list(percents.values()))

    def hover(key, score) -> str:
        where = f"{key[0]} {key[1]}" + ("" if key[2] is None else f"/{key[2]}")
        return f"{where}<br>perplexity {score['ppl']:.3f} ({percents[key]:+.3g}%)"

    by_key = {(s["kind"], s["layer"], s.get("index")): s for s in result["scores"]}
    layers = 1 + max(s["layer"] for s in result["scores"])
    kinds = [k for k in WHOLE_KINDS if any(key[0] == k for key in by_key)]
    values = {(k, l): signed_log_percent(percents[(k, l, i)]) for (k, l, i) in by_key if k in kinds}
    hovers = {(k, l): hover((k, l, i), s) for (k, l, i), s in by_key.items() if k in kinds}
    charts = [sensitivity_heatmap(layers, kinds, values, hovers, scale)]
    for kind in GROUP_COLUMNS:
        keys = [key for key in by_key if key[0] == kind]
        if not keys:
            continue
        rows = sorted({key[1] for key in keys})
        groups = 1 + max(key[2] for key in keys)
        grid = {(l, i): signed_log_percent(percents[(k, l, i)]) for k, l, i in keys}
        text = {(l, i): hover((k, l, i), by_key[(k, l, i)]) for k, l, i in keys}
        chart = group_heatmap(kind, rows, groups, grid, text, scale)
        chart.update_layout(title=kind)
        charts.append(chart)
    return charts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--width", type=int, default=1400)
    args = parser.parse_args()
    result = json.loads(args.result.read_text())
    charts = figures(result)
    title = (f"<h3 style='font-family:sans-serif'>{result['model']}: leave-one-out perplexity on {result['calib']} "
             f"({result['n_windows']} windows of {result['seq_len']}; nothing removed: {result['base_ppl']:.2f})</h3>")
    body = "".join(c.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displayModeBar": False}) for i, c in enumerate(charts))
    height = 80 + sum(int(c.layout.height or 450) for c in charts)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("needs Chromium (the browser test's) to render the page")
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "page.html"
        page.write_text(f"<html><body style='margin:8px'>{title}{body}</body></html>", encoding="utf-8")
        args.png.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--window-size={args.width},{height}", "--virtual-time-budget=5000",
                        f"--screenshot={args.png.resolve()}", page.as_uri()], check=True, capture_output=True)
    print(f"wrote {args.png} ({len(charts)} charts)")


if __name__ == "__main__":
    main()
