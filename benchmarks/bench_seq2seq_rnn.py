"""Dev-set figures for seq2seq_rnn.py on Hindi Dakshina at a wall-clock budget: every cell type with and without
attention, each run exactly as the README's one command runs it (one process, everything included in the budget).

Each named run is `python seq2seq_rnn.py --cell C --attention A --no-input_feeding --max_minutes M --data_dir D
--out_dir ...` in a subprocess (lstm+dot+feed: the script's default model, input feeding on); the wall time counts the
whole process. Dakshina's test split is not used: dev picks the checkpoint and dev is reported. Results go to one JSON
file per run, so runs can be split over several invocations (the CPU is shared; run it under the benchmark lock);
--table prints every run found so far. --side_by_side 2 runs two commands at a time with one thread each
(OMP_NUM_THREADS=1, set here, not in the script), one per core of a 2-core machine.

Run:
  flock /tmp/nanoverse-bench.lock python benchmarks/bench_seq2seq_rnn.py --runs lstm+dot+feed --minutes 20
  flock /tmp/nanoverse-bench.lock python benchmarks/bench_seq2seq_rnn.py --runs rnn,rnn+dot --minutes 20
  flock /tmp/nanoverse-bench.lock python benchmarks/bench_seq2seq_rnn.py --side_by_side 2 --minutes 20 \
      --runs rnn,rnn+dot,gru,gru+dot,lstm,lstm+dot --results_dir out-bench-seq2seq-cells
  python benchmarks/bench_seq2seq_rnn.py --table
"""

import argparse
import concurrent.futures
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Everything but the cell and the attention is the script's default (bidirectional 1-layer encoder, 256 units). The
# per-cell table compares attention itself, so its runs leave input feeding out; lstm+dot+feed is the default model.
RUNS = {f"{cell}{'+' + attention if attention != 'none' else ''}": ["--cell", cell, "--attention", attention,
                                                                     "--no-input_feeding"]
        for cell in ("rnn", "gru", "lstm") for attention in ("none", "dot")}
RUNS["lstm+additive"] = ["--cell", "lstm", "--attention", "additive", "--no-input_feeding"]
RUNS["lstm+dot+feed"] = ["--cell", "lstm", "--attention", "dot"]  # what `python seq2seq_rnn.py` trains
# The mirror's copy is a prepared folder too (see prepare_data.py dakshina).
DATA_DIR = str(Path(os.environ["NANOVERSE_DATA"], "dakshina", "hi")) if os.environ.get("NANOVERSE_DATA") else \
    "data/dakshina/hi"
METRICS = re.compile(r"dev \(beam (\d+), (\d+) rows, ([\d.]+)s\): word accuracy ([\d.]+)% \| any-reference ([\d.]+)% "
                     r"\| top-\d+ ([\d.]+)% \| CER ([\d.]+)%")


def machine():
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"{model}, {os.cpu_count()} cores"


def run_script(script, name, options, minutes, data_dir, results_dir, threads=0):
    """Runs one command to the end and records what it printed and logged; returns the result dict."""
    out_dir = results_dir / name
    command = [sys.executable, str(ROOT / script), *options, "--max_minutes", str(minutes), "--data_dir", data_dir,
               "--out_dir", str(out_dir)]
    if out_dir.exists():
        raise SystemExit(f"{out_dir} exists; delete it to run {name} again.")
    load_before, start = os.getloadavg(), time.time()
    environment = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    finished = subprocess.run(command, capture_output=True, text=True, env=environment)
    wall = time.time() - start
    (results_dir / f"{name}.out").write_text(finished.stdout + finished.stderr)
    if finished.returncode != 0:
        raise SystemExit(f"{name} failed; see {results_dir / (name + '.out')}")
    beam, rows, seconds, word, any_reference, top_k, cer = METRICS.findall(finished.stdout)[-1]
    log = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    parameters = int(re.search(r"([\d,]+) parameters", finished.stdout).group(1).replace(",", ""))
    ms = sorted(record["ms_per_step"] for record in log)
    result = {"run": name, "script": script, "command": " ".join(["python", script, *command[2:-2]]),
              "minutes_budget": minutes, "wall_minutes": wall / 60, "parameters": parameters,
              "epochs": log[-1]["epoch"],
              "best_dev_greedy": max(record["dev_accuracy"] for record in log), "beam": int(beam),
              "word_accuracy": float(word) / 100, "any_reference_accuracy": float(any_reference) / 100,
              "top_k_accuracy": float(top_k) / 100, "cer": float(cer) / 100, "final_search_seconds": float(seconds),
              "median_ms_per_step": ms[len(ms) // 2], "words_per_sec": sum(r["words_per_sec"] for r in log) / len(log),
              "log": [{key: record[key] for key in ("epoch", "minutes", "dev_accuracy", "lr")} for record in log],
              "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(start)),
              "threads": threads or "default",
              "load_before": load_before, "load_after": os.getloadavg()}
    (results_dir / f"{name}.json").write_text(json.dumps(result, indent=1))
    return result


def table(results_dir, names=None):
    rows = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))]
    rows = [r for r in rows if names is None or r["run"] in names]
    print("| run | parameters | wall min (budget) | epochs | median ms/step | words/s | dev greedy "
          "| dev beam-5 word acc | any-reference | top-5 | CER |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in sorted(rows, key=lambda r: r["word_accuracy"]):
        print(f"| {r['run']} | {r['parameters']:,} | {r['wall_minutes']:.1f} ({r['minutes_budget']:g}) | "
              f"{r['epochs']:g} | {r['median_ms_per_step']:.0f} | {r['words_per_sec']:.0f} | "
              f"{r['best_dev_greedy']:.2%} | {r['word_accuracy']:.2%} | {r['any_reference_accuracy']:.2%} | "
              f"{r['top_k_accuracy']:.2%} | {r['cer']:.2%} |")
    for r in rows:
        print(f"{r['run']}: {r['command']}  ({r['machine']}, {r['date']}, load {r['load_before'][0]:.1f} before)")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="", help=f"comma-separated runs from {', '.join(RUNS)}")
    parser.add_argument("--minutes", type=float, default=20, help="the whole run's budget (--max_minutes)")
    parser.add_argument("--data_dir", default=DATA_DIR, help="the prepared Hindi lexicons")
    parser.add_argument("--results_dir", default="out-bench-seq2seq", help="run folders and one JSON per run")
    parser.add_argument("--side_by_side", type=int, default=1, help="run this many at a time, one thread each")
    parser.add_argument("--table", action="store_true", help="only print the table of the runs done so far")
    args = parser.parse_args()
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    names = list(filter(None, args.runs.split(",")))
    if set(names) - set(RUNS):
        raise SystemExit(f"unknown run {(set(names) - set(RUNS)).pop()}; choose from {', '.join(RUNS)}.")
    threads = 1 if args.side_by_side > 1 else 0
    with concurrent.futures.ThreadPoolExecutor(args.side_by_side) as pool:
        for result in pool.map(lambda name: run_script("seq2seq_rnn.py", name, RUNS[name], args.minutes,
                                                       args.data_dir, results_dir, threads), names):
            print(f"{result['run']}: {result['word_accuracy']:.2%} in {result['wall_minutes']:.1f} min")
    table(results_dir, set(RUNS))


if __name__ == "__main__":
    main()
