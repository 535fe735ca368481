"""Time-to-loss of gpt.py on shakespeare_char on a CPU, against nanoGPT's CPU recipe run through the same script.

Each row runs a complete `python gpt.py ...` command in a fresh process and measures its wall time from launch to
exit (Python start, data, training, evaluations, checkpoint, loss picture and final sample all included). The final
validation loss is measured on the whole validation split (111,540 tokens). The time-to-loss columns read the
training clock at the first evaluation at or below the target (elapsed_s in log.jsonl).

Run (from the repository root, under the benchmark lock; about 5 minutes on 2 cores):
    flock /tmp/nanoverse-bench.lock python benchmarks/bench_gpt.py   # all rows
    python benchmarks/bench_gpt.py --skip_baseline  # without the 100-second nanoGPT recipe
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name, extra flags after `python gpt.py`. The depth rows keep everything else at gpt.py's defaults and give each
# depth about the same wall time. The nanoGPT row is its README CPU command (4 layers, 4 heads, 128 dims, context 64,
# batch 12, 2000 iterations, lr 1e-3 cosine to 1e-4, dropout 0), evaluated once at the end.
RUNS = [
    ("gpt.py default (README): 1 block", ""),
    ("2 blocks", "--n_layer 2 --max_iters 1700"),
    ("4 blocks (nanoGPT's shape)", "--n_layer 4 --max_iters 1400"),
    ("nanoGPT CPU recipe", "--n_layer 4 --batch_size 12 --learning_rate 1e-3 --min_lr 1e-4 --warmup_iters 100 "
                           "--max_iters 2000 --eval_interval 2000"),
]
TARGETS = (1.886, 1.80)


def shakespeare_char_tokens(work_dir):
    """The token files, as the README's first command makes them (prepare_data.py reads the shipped text)."""
    target = work_dir / "shakespeare_char"
    result = subprocess.run([sys.executable, str(ROOT / "prepare_data.py"), "shakespeare_char", "--out_dir",
                             str(target), "--no-eda", "--samples", "0"], cwd=work_dir, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"prepare_data.py failed:\n{result.stderr[-2000:]}")
    return target


def run(name, flags, data_dir, work_dir):
    out_dir = work_dir / name.replace(" ", "_").replace("(", "").replace(")", "")
    shutil.rmtree(out_dir, ignore_errors=True)
    command = [sys.executable, str(ROOT / "gpt.py"), "--data_dir", str(data_dir), "--out_dir", str(out_dir),
               *flags.split()]
    started = time.time()
    result = subprocess.run(command, cwd=work_dir, capture_output=True, text=True)
    wall = time.time() - started
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-2000:]}")
    log = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if "val_loss" in r]
    steps = [r for r in log if "ms_per_step" in r]
    row = {"name": name, "command": f"python gpt.py {flags}".strip(), "wall_s": wall,
           "val_loss": evals[-1]["val_loss"], "steps": evals[-1]["step"],
           "ms_per_step": sum(r["ms_per_step"] for r in steps) / len(steps), "curve": evals}
    for target in TARGETS:
        reached = [r["elapsed_s"] for r in evals if r["val_loss"] <= target]
        row[f"to_{target}"] = reached[0] if reached else None
    return row


def format_row(row):
    reach = [f"{row[f'to_{t}']:.1f} s" if row[f"to_{t}"] is not None else "-" for t in TARGETS]
    return (f"| {row['name']} | `{row['command']}` | {row['steps']} | {row['ms_per_step']:.1f} | {row['wall_s']:.1f} | "
            f"{row['val_loss']:.4f} | {reach[0]} | {reach[1]} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip_baseline", action="store_true", help="leave out the nanoGPT recipe row")
    args = parser.parse_args()
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    header = ("| run | command | steps | ms/step | wall time (s) | val loss (whole split) | train clock to 1.886 | "
              "to 1.80 |\n|---|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gpt-") as temporary:
        work_dir = Path(temporary)
        data_dir = shakespeare_char_tokens(work_dir)
        for name, flags in RUNS:
            if args.skip_baseline and name.startswith("nanoGPT"):
                continue
            rows.append(run(name, flags, data_dir, work_dir))
            print(format_row(rows[-1]), flush=True)  # each row as soon as it is measured
    print("\n" + header)
    for row in rows:
        print(format_row(row))
    print("\nvalidation loss curves (step: loss @ training-clock seconds; the last point is the whole split):")
    for row in rows:
        points = ", ".join(f"{r['step']}: {r['val_loss']:.3f} @ {r['elapsed_s']:.0f}s" for r in row["curve"])
        print(f"  {row['name']}: {points}")
    default, baseline = rows[0], next((row for row in rows if row["name"].startswith("nanoGPT")), None)
    if baseline:  # the goal: the README command reaches 1.886 in at most half of the recipe's wall time
        print(f"\ngoal: gpt.py's default {default['wall_s']:.1f} s from launch to exit (val loss {default['val_loss']:.4f})"
              f" vs nanoGPT's CPU recipe {baseline['wall_s']:.1f} s (val loss {baseline['val_loss']:.4f}): ratio "
              f"{default['wall_s'] / baseline['wall_s']:.2f}; met: "
              f"{default['val_loss'] <= 1.886 and default['wall_s'] <= baseline['wall_s'] / 2}")


if __name__ == "__main__":
    main()
