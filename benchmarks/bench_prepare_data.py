"""Benchmark prepare_data.py on the local data mirror: corpus sizes, token counts and seconds per run.

Run:
    NANOVERSE_DATA=/path/to/data python benchmarks/bench_prepare_data.py            # all rows (~1-2 min on 2 cores)
    NANOVERSE_DATA=/path/to/data python benchmarks/bench_prepare_data.py --no-bpe   # skip the BPE-training row
Each row runs prepare() end to end into a temporary folder twice, with and without the exploratory report
(eda.json + eda.png), and prints the best of --repeats runs.
"""

import argparse
import contextlib
import hashlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import prepare_data as pd  # noqa: E402

ROWS = [  # (dataset, tokenizer, extra config)
    ("shakespeare_char", "char", {}),
    ("shakespeare", "gpt2", {}),
    ("lyrics", "char", {}),
    ("lyrics", "gpt2", {}),
    ("poems", "gpt2", {}),
    ("shakespeare", "bpe", {"vocab_size": 512}),
]


def timed_run(config, repeats):
    best, meta = float("inf"), None
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(io.StringIO()):
            start = time.perf_counter()
            meta = pd.prepare(pd.Config(**{**config, "out_dir": folder}))
            best = min(best, time.perf_counter() - start)
    return best, meta


def offline_tiktoken_cache(mirror):
    """tiktoken keeps GPT-2's two files under the sha1 of their URLs: fill such a cache from the mirror's copies."""
    cache = Path(tempfile.mkdtemp(prefix="tiktoken-"))
    base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    for name in ("vocab.bpe", "encoder.json"):
        shutil.copyfile(Path(mirror) / "gpt2" / name, cache / hashlib.sha1((base + name).encode()).hexdigest())
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(cache))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs per row; the fastest is reported")
    parser.add_argument("--bpe", action=argparse.BooleanOptionalAction, default=True, help="include the bpe row")
    args = parser.parse_args()
    if not os.environ.get("NANOVERSE_DATA"):
        raise SystemExit("error: set NANOVERSE_DATA to the local data folder (tinyshakespeare/, poetry_lyrics/, ...)")
    offline_tiktoken_cache(os.environ["NANOVERSE_DATA"])
    header = ("dataset", "tokenizer", "docs kept", "characters", "vocab", "train tokens", "val tokens",
              "chars/token", "s (no eda)", "s (with eda)")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" --- " if i < 2 else " ---: " for i in range(len(header))) + "|")
    for dataset, tokenizer, extra in ROWS:
        if tokenizer == "bpe" and not args.bpe:
            continue
        config = {"dataset": dataset, "tokenizer": tokenizer, **extra}
        seconds_plain, meta = timed_run({**config, "eda": False}, args.repeats)
        seconds_eda, _ = timed_run({**config, "eda": True}, args.repeats)
        tokens = meta["train_tokens"] + meta["val_tokens"]
        documents = meta["cleansing"]["documents_kept"]
        characters = meta["characters"]
        print(f"| {dataset} | {tokenizer} | {documents:,} | {characters:,} | {meta['vocab_size']:,} | "
              f"{meta['train_tokens']:,} | {meta['val_tokens']:,} | {characters / tokens:.2f} | "
              f"{seconds_plain:.2f} | {seconds_eda:.2f} |")


if __name__ == "__main__":
    main()
