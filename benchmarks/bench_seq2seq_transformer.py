"""seq2seq_transformer.py beside seq2seq_rnn.py on Hindi Dakshina dev: each README command at the same wall-clock
budget, and dev accuracy against minutes as the budget grows.

Each run is the script's own command (`python SCRIPT --max_minutes M --data_dir D --out_dir ...`) in a subprocess, the
wall time counting the whole process; one JSON per run. The curve comes from a run's log.jsonl, which records the
greedy dev accuracy and the minutes since the start after every epoch: a 60-minute run gives the whole curve, and its
first 20 minutes are those of a 20-minute run (no schedule depends on the budget). Dev only: the mirror has no test
split.

Run (under the benchmark lock, one run at a time):
  flock /tmp/nanoverse-bench.lock python benchmarks/bench_seq2seq_transformer.py --runs rnn,transformer --minutes 20
  flock /tmp/nanoverse-bench.lock python benchmarks/bench_seq2seq_transformer.py --runs transformer --minutes 60
  python benchmarks/bench_seq2seq_transformer.py --table
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_seq2seq_rnn import DATA_DIR, run_script, table  # noqa: E402

SCRIPTS = {"rnn": "seq2seq_rnn.py", "transformer": "seq2seq_transformer.py"}
MINUTES = (2, 5, 10, 15, 20, 30, 40, 50, 60)


def curves(results_dir):
    """Best greedy dev accuracy reached by each minute mark, from every run's log."""
    rows = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))]
    rows = [r for r in rows if r["run"].split("-")[0] in SCRIPTS]
    print("\n| run | " + " | ".join(f"{m} min" for m in MINUTES) + " | epochs | final beam-5 |")
    print("| --- |" + " ---: |" * (len(MINUTES) + 2))
    for r in rows:
        marks = []
        for m in MINUTES:
            seen = [record["dev_accuracy"] for record in r["log"] if record["minutes"] <= m]
            marks.append(f"{max(seen):.2%}" if seen and m <= r["wall_minutes"] + 0.5 else "")
        print(f"| {r['run']} | " + " | ".join(marks) + f" | {r['epochs']:g} | {r['word_accuracy']:.2%} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="", help="comma-separated: rnn, transformer")
    parser.add_argument("--minutes", type=float, default=20, help="the whole run's budget (--max_minutes)")
    parser.add_argument("--extra", default="", help="more options for the script, e.g. '--patience 10'")
    parser.add_argument("--data_dir", default=DATA_DIR, help="the prepared Hindi lexicons")
    parser.add_argument("--results_dir", default="out-bench-seq2seq", help="run folders and one JSON per run")
    parser.add_argument("--table", action="store_true", help="only print the tables of the runs done so far")
    args = parser.parse_args()
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    for name in filter(None, args.runs.split(",")):
        if name not in SCRIPTS:
            raise SystemExit(f"unknown run {name}; choose from {', '.join(SCRIPTS)}.")
        run_script(SCRIPTS[name], f"{name}-{args.minutes:g}min", args.extra.split(), args.minutes, args.data_dir,
                   results_dir)
    table(results_dir, {f"{name}-{m:g}min" for name in SCRIPTS for m in (20, 60, 90, 120)})
    curves(results_dir)


if __name__ == "__main__":
    main()
