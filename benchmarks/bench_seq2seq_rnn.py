"""Dev-set figures for seq2seq_rnn.py on Hindi Dakshina: every cell type with and without attention, and the best model.

Each named run trains seq2seq_rnn.py on the Hindi training split for a fixed budget of minutes (dev greedy accuracy
picks the checkpoint), then beam-searches the dev split. Dakshina's test split is not used: we tune and select on dev
only. Results go to one JSON file per run, so runs can be split over several invocations (the CPU is shared); the
table shows every run found so far.

Run:
  NANOVERSE_DATA=../shared/data python benchmarks/bench_seq2seq_rnn.py --runs rnn,rnn+dot,gru --minutes 2.5
  NANOVERSE_DATA=../shared/data python benchmarks/bench_seq2seq_rnn.py --runs gru+dot,lstm,lstm+dot --minutes 2.5
  NANOVERSE_DATA=../shared/data python benchmarks/bench_seq2seq_rnn.py --minutes 20 --extra "--lr_schedule linear" \
      --ensemble "--seed 1; --seed 1 --reverse_output"
  NANOVERSE_DATA=../shared/data python benchmarks/bench_seq2seq_rnn.py --table
  NANOVERSE_DATA=../shared/data python benchmarks/bench_seq2seq_rnn.py --speed 200

--speed N times N training steps of the default model on one thread, in float32 and with bfloat16 autocast, with
Adam's plain and fused updates (nothing is saved).

--ensemble "A; B; ..." trains one model per option set at the same time, one process per share of the cores, each for
--minutes of training, then beam-searches dev with each model alone and with all of them as an ensemble.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import seq2seq_rnn  # noqa: E402

# Everything but the cell and the attention is the script's default (bidirectional 1-layer encoder, 256 units).
RUNS = {f"{cell}{'+' + attention if attention != 'none' else ''}": ["--cell", cell, "--attention", attention]
        for cell in ("rnn", "gru", "lstm") for attention in ("none", "dot")}
RUNS["lstm+additive"] = ["--cell", "lstm", "--attention", "additive"]
# Options of --extra that also decide how dev is scored, so the ensemble's evaluation passes them on.
SCORING_OPTIONS = ("--beam_size", "--length_penalty", "--max_dev_rows", "--max_output_length", "--data_dir")


def scoring_options(extra):
    return [part for flag, value in zip(extra, extra[1:]) if flag in SCORING_OPTIONS for part in (flag, value)]


def run(name, extra, minutes, chunk, results_dir):
    """Trains (or resumes) one run up to `minutes` of training in all, at most `chunk` more minutes this time."""
    out_dir = results_dir / name
    budget, resume = minutes, []
    if (out_dir / "last.pt").exists():  # resuming is exact (tests/test_seq2seq_rnn.py), so chunks equal one run
        done = torch.load(out_dir / "last.pt", map_location="cpu", weights_only=True)["progress"]["train_seconds"]
        budget, resume = min(minutes, done / 60 + chunk) if chunk else minutes, ["--resume"]
    elif chunk:
        budget = min(minutes, chunk)
    argv = RUNS[name] + extra + ["--max_minutes", str(budget), "--out_dir", str(out_dir), "--heatmaps", "0"] + resume
    start = time.time()
    metrics = seq2seq_rnn.main(argv)
    checkpoint = torch.load(out_dir / "best.pt", map_location="cpu", weights_only=True)
    last = torch.load(out_dir / "last.pt", map_location="cpu", weights_only=True)
    result = {"run": name, "command": "python seq2seq_rnn.py " + " ".join(RUNS[name] + extra) +
              f" --max_minutes {minutes}", "parameters": sum(t.numel() for t in checkpoint["model"].values()),
              "train_minutes": last["progress"]["train_seconds"] / 60, "epochs": last["progress"]["epoch"],
              "best_epoch": checkpoint["progress"]["epoch"], "dev_greedy": checkpoint["progress"]["best_dev_accuracy"],
              "wall_minutes": (time.time() - start) / 60, **metrics}
    (results_dir / f"{name}.json").write_text(json.dumps(result, indent=1))


def ensemble_run(option_sets, extra, minutes, results_dir):
    """Trains one model per option set side by side (one process each, the cores shared out), then scores them alone
    and together."""
    name = "ensemble " + " + ".join(" ".join(options) or "defaults" for options in option_sets)
    threads = max(1, (os.cpu_count() or 1) // len(option_sets))
    out_dirs = [results_dir / "ensemble" / f"model{i}" for i in range(1, len(option_sets) + 1)]
    for out_dir in out_dirs:  # a new ensemble run starts its models afresh (the script refuses to overwrite a run)
        shutil.rmtree(out_dir, ignore_errors=True)
    commands = [[sys.executable, str(ROOT / "seq2seq_rnn.py"), "--max_minutes", str(minutes), "--threads", str(threads)]
                + extra + options + ["--out_dir", str(out_dir), "--heatmaps", "0"]
                for options, out_dir in zip(option_sets, out_dirs)]
    start = time.time()
    processes = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for command in commands]
    failed = [command for process, command in zip(processes, commands) if process.wait() != 0]
    if failed:
        raise SystemExit(f"{len(failed)} training process(es) of {name} failed; run this one by hand to see why: "
                         f"{' '.join(failed[0])}")
    train_wall = (time.time() - start) / 60
    # dev of the checkpoints' own language and data folder, scored as --extra says (beam size, dev rows, ...)
    scoring = ["--evaluate", "dev", "--heatmaps", "0"] + scoring_options(extra)
    singles = [seq2seq_rnn.main(scoring + ["--checkpoint", str(out_dir / "best.pt"), "--out_dir", str(out_dir)])
               for out_dir in out_dirs]
    metrics = seq2seq_rnn.main(scoring + ["--checkpoint", ",".join(str(d / "best.pt") for d in out_dirs),
                                          "--out_dir", str(results_dir / "ensemble")])
    logs = [[json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()] for out_dir in out_dirs]
    result = {"run": name, "commands": [" ".join(["python seq2seq_rnn.py"] + c[2:]) for c in commands],
              "train_wall_minutes": train_wall, "epochs": [len(log) for log in logs],
              "single_word_accuracy": [m["word_accuracy"] for m in singles], **metrics}
    (results_dir / "ensemble.json").write_text(json.dumps(result, indent=1))


def speed(steps):
    """ms per training step of the default model (batch 64, one thread) for each precision and Adam update."""
    torch.set_num_threads(1)
    config = seq2seq_rnn.Config()
    pairs = seq2seq_rnn.read_lexicon(seq2seq_rnn.lexicon_path(config, "train"), config.direction)
    vocabularies = [seq2seq_rnn.build_vocabulary(words) for words in zip(*pairs)]
    stoi = [{c: i for i, c in enumerate(vocabulary)} for vocabulary in vocabularies]
    batches = seq2seq_rnn.batches_by_length(pairs, config.batch_size, torch.Generator().manual_seed(0))
    batches = [seq2seq_rnn.make_batch([pairs[i] for i in indices], *stoi, "cpu") for indices in batches[:steps + 10]]
    rows = []
    for precision in ("float32", "bfloat16"):
        if precision == "bfloat16" and not seq2seq_rnn.cpu_computes_bfloat16():
            print("this CPU has no native bfloat16 (AVX512-BF16 or AMX): bfloat16 rows skipped")
            continue
        for fused in (False, True):
            torch.manual_seed(0)
            model = seq2seq_rnn.Seq2Seq(config, *map(len, vocabularies))
            optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, fused=fused)
            for i, (source, lengths, target_inputs, target_outputs) in enumerate(batches):
                if i == 10:  # the first steps warm up oneDNN's kernels and the allocator
                    start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                    logits = model(source, lengths, target_inputs)
                loss = seq2seq_rnn.sequence_loss(logits.float(), target_outputs, config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
            rows.append((precision, "fused" if fused else "plain", 1000 * (time.perf_counter() - start) / steps))
    print(f"| products | Adam | ms per step ({steps} steps of {config.batch_size} words, 1 thread) | speed vs float32, "
          f"plain Adam |")
    print("| --- | --- | ---: | ---: |")
    for precision, adam, ms in rows:
        print(f"| {precision} | {adam} | {ms:.1f} | {rows[0][2] / ms:.2f}x |")


def table(results_dir):
    rows = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))]
    ensembles = [r for r in rows if r["run"].startswith("ensemble")]
    rows = [r for r in rows if not r["run"].startswith("ensemble")]
    print("| run | parameters | training min | epochs (best) | dev greedy | dev beam-5 word acc | any-reference | "
          "top-5 | CER |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in sorted(rows, key=lambda r: r["word_accuracy"]):
        print(f"| {r['run']} | {r['parameters']:,} | {r['train_minutes']:.1f} | {r['epochs']} ({r['best_epoch']}) | "
              f"{r['dev_greedy']:.2%} | {r['word_accuracy']:.2%} | {r['any_reference_accuracy']:.2%} | "
              f"{r['top_k_accuracy']:.2%} | {r['cer']:.2%} |")
    for r in rows:
        print(f"{r['run']}: {r['command']}")
    if ensembles:
        print("\n| models | training wall min | epochs per model | each alone (beam-5) | ensemble beam-5 word acc | "
              "any-reference | top-5 | CER |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in ensembles:
        print(f"| {r['run']} | {r['train_wall_minutes']:.1f} | {', '.join(map(str, r['epochs']))} | "
              f"{', '.join(f'{a:.2%}' for a in r['single_word_accuracy'])} | {r['word_accuracy']:.2%} | "
              f"{r['any_reference_accuracy']:.2%} | {r['top_k_accuracy']:.2%} | {r['cer']:.2%} |")
        print("\n".join(r["commands"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="", help=f"comma-separated runs from {', '.join(RUNS)}")
    parser.add_argument("--minutes", type=float, default=2.5, help="training budget per run (dev passes included)")
    parser.add_argument("--chunk", type=float, default=0, help="train at most this many more minutes per call "
                        "(0 = all at once); call again to resume, so no call holds the CPU too long")
    parser.add_argument("--extra", default="", help="more seq2seq_rnn.py options for every run, e.g. '--epochs 30'")
    parser.add_argument("--results_dir", default="out-bench-seq2seq", help="checkpoints and one JSON per run")
    parser.add_argument("--ensemble", default="", help="semicolon-separated seq2seq_rnn.py option sets: train one "
                        "model per set side by side and score their ensemble")
    parser.add_argument("--table", action="store_true", help="only print the table of the runs done so far")
    parser.add_argument("--speed", type=int, default=0, help="time this many training steps per precision and "
                        "Adam update, print that table, and stop")
    args = parser.parse_args()
    if not os.environ.get("NANOVERSE_DATA"):
        raise SystemExit("set NANOVERSE_DATA to the data mirror (with dakshina/hi/) so the runs read local files.")
    if args.speed:
        return speed(args.speed)
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    for name in filter(None, args.runs.split(",")):
        if name not in RUNS:
            raise SystemExit(f"unknown run {name}; choose from {', '.join(RUNS)}.")
        run(name, args.extra.split(), args.minutes, args.chunk, results_dir)
    if args.ensemble:
        ensemble_run([options.split() for options in args.ensemble.split(";")], args.extra.split(), args.minutes,
                     results_dir)
    table(results_dir)


if __name__ == "__main__":
    main()
