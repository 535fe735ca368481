"""Benchmark bpe.py: training time (fast vs reference trainer) and GPT-2 encoding throughput (vs tiktoken).

Training: Tiny Shakespeare with GPT-2's split pattern to vocab 512 and 4096, the fast trainer against the textbook
reference trainer (same merges, checked). Encoding: GPT-2's tokenizer in pure Python against tiktoken (compiled Rust,
one thread) on the same texts, ids checked identical; "cold" starts with an empty chunk cache, "warm" encodes the
text a second time.

Run:
    python benchmarks/bench_bpe.py                    (about two minutes, most of it the reference trainer)
    python benchmarks/bench_bpe.py --no-reference     (seconds)
Data comes from $NANOVERSE_DATA (tinyshakespeare/input.txt, gpt2/*, and when present the lyrics, poems and Bengali
Dakshina words for more encoding rows) or is downloaded (Tiny Shakespeare and GPT-2's files only).
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bpe  # noqa: E402

MINBPE_SECONDS_512 = 76.0  # minbpe's RegexTokenizer, vocab 512 on Tiny Shakespeare, measured on the 2-core machine


def best_of(repeats, function):
    """(smallest wall time in seconds, last result) over `repeats` calls."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def tiktoken_gpt2():
    """tiktoken's GPT-2 encoding built from the two local files, so that nothing is downloaded."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(bpe.data_file("gpt2/vocab.bpe")),
                                            encoder_json_file=str(bpe.data_file("gpt2/encoder.json")))
    pattern = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""  # tiktoken's
    return tiktoken.Encoding(name="gpt2", pat_str=pattern, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


def bench_training(text, reference, repeats):
    rows, fast_merges = [], {}
    for vocab_size in (512, 4096):
        seconds, tokenizer = best_of(repeats, lambda: bpe.Tokenizer.train(text, vocab_size))
        fast_merges[vocab_size] = tokenizer.merges
        rows.append((f"train vocab {vocab_size}", "fast trainer", f"{seconds:.2f} s",
                     f"{MINBPE_SECONDS_512 / seconds:.0f}x faster than minbpe's {MINBPE_SECONDS_512:.0f} s"
                     if vocab_size == 512 else f"{len(tokenizer.merges)} merges"))
    if reference:
        seconds, tokenizer = best_of(1, lambda: bpe.Tokenizer.train(text, 512, trainer="reference"))
        same = list(tokenizer.merges.items()) == list(fast_merges[512].items())
        rows.append(("train vocab 512", "reference trainer", f"{seconds:.1f} s",
                     f"identical merges: {same}; 4096 not run: <= {seconds * 3839 / 255:.0f} s (linear estimate)"))
    rows.append(("train vocab 512", "minbpe RegexTokenizer", f"{MINBPE_SECONDS_512:.0f} s", "quoted, not run here"))
    return rows


def bench_encoding(texts, repeats):
    encoding = tiktoken_gpt2()
    tokenizer = bpe.gpt2_tokenizer()
    rows = []
    for name, text in texts.items():
        megabytes = len(text.encode("utf-8")) / 1e6
        tiktoken_seconds, expected = best_of(repeats, lambda: encoding.encode_ordinary(text))

        def cold():
            tokenizer._cache.clear()
            return tokenizer.encode_ordinary(text)

        cold_seconds, ids = best_of(repeats, cold)
        warm_seconds, warm_ids = best_of(repeats, lambda: tokenizer.encode_ordinary(text))
        same = ids == expected and warm_ids == expected
        tiktoken_speed = megabytes / tiktoken_seconds
        rows.append((f"encode {name} ({megabytes:.1f} MB)", "tiktoken gpt2", f"{tiktoken_speed:.2f} MB/s",
                     f"{len(expected):,} tokens"))
        for label, seconds in (("bpe.py gpt2, cold cache", cold_seconds), ("bpe.py gpt2, warm cache", warm_seconds)):
            speed = megabytes / seconds
            rows.append((f"encode {name} ({megabytes:.1f} MB)", label, f"{speed:.2f} MB/s",
                         f"{speed / tiktoken_speed:.2f} of tiktoken; identical ids: {same}"))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the reference trainer at vocab 512 (about 100 s)")
    parser.add_argument("--repeats", type=int, default=3, help="timings are the best of this many runs")
    args = parser.parse_args(argv)
    shakespeare = bpe.data_file("tinyshakespeare/input.txt").read_text(encoding="utf-8")
    texts = {"Tiny Shakespeare": shakespeare}
    mirror = os.environ.get("NANOVERSE_DATA")
    if mirror and (Path(mirror) / "poetry_lyrics").is_dir():
        lyrics = sorted((Path(mirror) / "poetry_lyrics").glob("*.txt"))
        texts["lyrics"] = "".join(path.read_text(encoding="utf-8", errors="replace") for path in lyrics)
    if mirror and (Path(mirror) / "poems").is_dir():
        poems = json.loads((Path(mirror) / "poems" / "poetryfoundation_poems_by_author.json").read_text("utf-8"))
        texts["poems"] = "\n\n".join(poem for titles in poems.values() for poem in titles.values() if poem)
    if mirror and (Path(mirror) / "dakshina").is_dir():  # Bengali script: 3 UTF-8 bytes per letter, many merges
        texts["Bengali words"] = (Path(mirror) / "dakshina" / "bn" / "bn.translit.sampled.train.tsv").read_text("utf-8")
    rows = bench_training(shakespeare, args.reference, args.repeats) + bench_encoding(texts, args.repeats)
    print(f"bpe.py benchmark: Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"best of {args.repeats} (reference trainer: 1 run)\n")
    header = ("task", "implementation", "time / speed", "notes")
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(4)]
    for row in [header, tuple("-" * w for w in widths)] + rows:
        print("| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |")


if __name__ == "__main__":
    main()
