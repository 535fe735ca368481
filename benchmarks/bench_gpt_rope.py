"""Learned positions (gpt.py) against rotary positions (gpt_rope.py) on shakespeare_char, over several seeds.

Both scripts train the same model shape on the same token files with the same steps, batches and seeds; the only
difference is how positions enter the model. For every run this measures: the validation loss at the end (the whole
validation split, in block_size windows), training tokens/s, the validation loss curve, and what happens with twice
the training context. A RoPE model has no position weights, so its checkpoint loads into a model with a 2x block_size
and runs on 2x windows: we report its loss over all 2 * block_size positions and over the unseen positions
block_size .. 2 * block_size - 1 alone. gpt.py's position table has block_size rows, so it cannot run on a longer
window at all (N/A); what it can do with a longer text is slide its window, which the last column measures for both
models (windows of block_size moved by block_size / 2, each scored token sees block_size/2 .. block_size - 1 tokens).

Each run writes its own result file, so runs can be split over several invocations (the CPU is shared); the table
and the picture cover every run found so far.

Run:
  flock /tmp/nanoverse-bench.lock python benchmarks/bench_gpt_rope.py --picture benchmarks/rope_vs_learned.png  # ~10 min
  python benchmarks/bench_gpt_rope.py --seeds 4 5 --variants rope                # more runs, added to the table
  python benchmarks/bench_gpt_rope.py --table                                    # the table of the runs so far
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import gpt  # noqa: E402
import gpt_rope  # noqa: E402

VARIANTS = {"learned": gpt, "rope": gpt_rope}
# nanoGPT's CPU shape (4 blocks, 4 heads, 128 channels, 64-token context, 12 sequences per step), float32,
# with a fixed sample of the validation split for the curve (the final figures use the whole split).
TRAIN_FLAGS = ["--n_layer", "4", "--n_head", "4", "--n_embd", "128", "--block_size", "64", "--batch_size", "12",
               "--learning_rate", "1e-3", "--min_lr", "1e-4", "--warmup_iters", "100", "--dropout", "0",
               "--eval_interval", "100", "--eval_iters", "20", "--log_interval", "50", "--device", "cpu",
               "--dtype", "float32", "--no-compile"]


def prepare_shakespeare_char(folder):
    """Token files for shakespeare_char, as prepare_data.py makes them from the text shipped in the repository."""
    if (folder / "meta.json").is_file():
        return folder
    command = [sys.executable, str(ROOT / "prepare_data.py"), "shakespeare_char", "--out_dir", str(folder), "--no-eda",
               "--samples", "0"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"prepare_data.py failed:\n{result.stderr[-2000:]}")
    return folder


@torch.no_grad()
def position_losses(model, tokens, window, stride, batch_size=32):
    """Mean cross-entropy at each position 0 .. window - 1 of windows that start every `stride` tokens."""
    model.eval()
    starts = np.arange(0, len(tokens) - window - 1, stride)
    total = torch.zeros(window, dtype=torch.float64)
    for i in range(0, len(starts), batch_size):
        windows = [tokens[s:s + window + 1].astype(np.int64) for s in starts[i:i + batch_size]]
        batch = torch.from_numpy(np.stack(windows))
        logits, _, _ = model(batch[:, :-1])
        total += F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none").sum(dim=0).double()
    return total / len(starts)


def load_model(module, out_dir, block_size=None):
    checkpoint = module.load_checkpoint(out_dir / "ckpt.pt")
    fields = dict(checkpoint["config"], dropout=0.0)
    if block_size:
        fields["block_size"] = block_size  # RoPE only: no weight depends on block_size
    model = module.GPT(module.Config(**fields))
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def run(variant, seed, max_iters, data_dir, results_dir):
    result_path = results_dir / f"{variant}-seed{seed}.json"
    if result_path.is_file():
        print(f"{result_path.name}: done already")
        return
    module, out_dir = VARIANTS[variant], results_dir / f"{variant}-seed{seed}"
    checkpoint_path = out_dir / "ckpt.pt"
    trained = checkpoint_path.is_file() and torch.load(checkpoint_path, weights_only=True)["step"] == max_iters
    if not trained:  # a run that did not finish starts again from scratch; a finished one is only evaluated
        for name in ("log.jsonl", "ckpt.pt"):
            (out_dir / name).unlink(missing_ok=True)
        module.main(TRAIN_FLAGS + ["--data_dir", str(data_dir), "--out_dir", str(out_dir), "--seed", str(seed),
                                   "--max_iters", str(max_iters)])
    records = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    val_tokens = np.memmap(data_dir / "val.bin", dtype=np.uint16, mode="r")
    model = load_model(module, out_dir)
    T = model.config.block_size
    at_block_size = position_losses(model, val_tokens, T, T)
    sliding = position_losses(model, val_tokens, T, T // 2)[T // 2:]  # each token sees T/2 .. T-1 earlier tokens
    result = {"variant": variant, "seed": seed, "max_iters": max_iters, "block_size": T,
              "parameters": model.num_parameters(),
              "train_seconds": [r["elapsed_s"] for r in records if "elapsed_s" in r][-1],
              "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in records if "tokens_per_sec" in r),
              "val_loss": at_block_size.mean().item(), "val_loss_sliding": sliding.mean().item(),
              "position_loss": at_block_size.tolist(),
              "val_curve": [(r["step"], r["val_loss"]) for r in records if "val_loss" in r],
              "train_curve": [(r["step"], r["loss"]) for r in records if "loss" in r]}
    if variant == "rope":  # the same weights with tables for twice the context
        long_losses = position_losses(load_model(module, out_dir, block_size=2 * T), val_tokens, 2 * T, 2 * T)
        result.update(val_loss_2x=long_losses.mean().item(), val_loss_2x_unseen=long_losses[T:].mean().item(),
                      position_loss_2x=long_losses.tolist())
    temporary = result_path.with_name(result_path.name + ".tmp")
    temporary.write_text(json.dumps(result))
    os.replace(temporary, result_path)
    print(f"{variant} seed {seed}: val loss {result['val_loss']:.4f} | {result['tokens_per_sec']:,.0f} tok/s")


def mean_and_spread(values):
    if not values:
        return "N/A"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def table(results):
    """One row per variant: mean ± sample standard deviation over seeds."""
    lines = ["| positions | seeds | params | final val loss | tokens/s | val loss @2x context (all / unseen positions) "
             "| sliding window (T, stride T/2) |", "|---|---|---|---|---|---|---|"]
    for variant in VARIANTS:
        runs = [r for r in results if r["variant"] == variant]
        if not runs:
            continue
        if variant == "rope":
            long = (f"{mean_and_spread([r['val_loss_2x'] for r in runs])} / "
                    f"{mean_and_spread([r['val_loss_2x_unseen'] for r in runs])}")
        else:
            long = "N/A (wpe has block_size rows)"
        lines.append(f"| {variant} ({'gpt_rope.py' if variant == 'rope' else 'gpt.py'}) "
                     f"| {','.join(str(r['seed']) for r in runs)} | {runs[0]['parameters']:,} "
                     f"| {mean_and_spread([r['val_loss'] for r in runs])} "
                     f"| {statistics.mean(r['tokens_per_sec'] for r in runs):,.0f} "
                     f"| {long} | {mean_and_spread([r['val_loss_sliding'] for r in runs])} |")
    return "\n".join(lines)


def picture(results, path):
    """Left: validation loss curves of every run. Right: loss at each position of the window, at 1x and 2x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"learned": "tab:blue", "rope": "tab:orange"}
    figure, (curves, positions) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in results:
        first = r is next(other for other in results if other["variant"] == r["variant"])
        label = f"{r['variant']}, seeds {', '.join(str(o['seed']) for o in results if o['variant'] == r['variant'])}"
        # The curve's points are a fixed sample of the split; the last point is the whole split, as in the table.
        points = [(step, loss) for step, loss in r["val_curve"] if step < r["max_iters"]]
        points.append((r["max_iters"], r["val_loss"]))
        curves.plot(*zip(*points), color=colours[r["variant"]], alpha=0.7, label=label if first else None)
    curves.set_xlabel("step")
    curves.set_ylabel("validation loss (fixed sample, nats/char)")
    curves.set_ylim(top=min(3.0, curves.get_ylim()[1]))
    curves.legend(fontsize=8)
    curves.grid(alpha=0.3)
    for variant in VARIANTS:
        runs = [r for r in results if r["variant"] == variant]
        if runs:
            positions.plot(np.mean([r["position_loss"] for r in runs], axis=0), color=colours[variant],
                           label=f"{variant}, block_size windows")
        if runs and variant == "rope":
            positions.plot(np.mean([r["position_loss_2x"] for r in runs], axis=0), color=colours[variant],
                           linestyle="--", label="rope, 2 x block_size windows")
    if results:
        positions.axvline(results[0]["block_size"] - 0.5, color="gray", linestyle=":", label="training length")
    positions.set_xlabel("position in the window (tokens of context)")
    positions.set_ylabel("validation loss (nats/char), mean over seeds")
    positions.set_ylim(1.3, 3.0)
    positions.legend(fontsize=8)
    positions.grid(alpha=0.3)
    temporary = Path(path).with_name(Path(path).name + ".tmp")
    figure.savefig(temporary, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    os.replace(temporary, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3], help="seeds to train (each variant)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS),
                        help="learned (gpt.py) and/or rope (gpt_rope.py)")
    parser.add_argument("--max_iters", type=int, default=1000, help="optimizer steps per run")
    parser.add_argument("--results_dir", default="/tmp/bench_gpt_rope", help="token files, runs and result files")
    parser.add_argument("--table", action="store_true", help="only print the table of the runs done so far")
    parser.add_argument("--picture", default="", help="write the loss curves and per-position losses to this PNG")
    args = parser.parse_args(argv)
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    if not args.table:
        data_dir = prepare_shakespeare_char(results_dir / "shakespeare_char")
        for seed in args.seeds:
            for variant in args.variants:
                run(variant, seed, args.max_iters, data_dir, results_dir)
    results = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*-seed*.json"))]
    results = [r for r in results if r["max_iters"] == args.max_iters]
    print(f"\nshakespeare_char, {args.max_iters} steps per run, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(table(results))
    if args.picture and results:
        picture(results, args.picture)
        print(f"picture: {args.picture}")


if __name__ == "__main__":
    main()
