"""Benchmark bpe.py: training time (fast vs reference trainer) and GPT-2 encoding throughput (vs tiktoken).

Training: Tiny Shakespeare with GPT-2's split pattern to vocab 512 and 4096, the fast trainer against the textbook
reference trainer (same merges, checked). Encoding: GPT-2's tokenizer in pure Python against tiktoken (compiled Rust,
one thread) on the same texts, ids checked identical; "cold" starts with an empty chunk cache, "warm" encodes the
text a second time.

Side by side with minbpe (github.com/karpathy/minbpe, not a dependency): pass a checkout with --minbpe DIR and its
RegexTokenizer trains on the same text with the same GPT-2 pattern to the same number of merges, in the same process.

Run:
    python benchmarks/bench_bpe.py --minbpe ../minbpe     (about five minutes: the reference trainer and minbpe)
    python benchmarks/bench_bpe.py --no-reference          (seconds)
Data: the shipped Tiny Shakespeare; GPT-2's files from $NANOVERSE_DATA/gpt2 (or tiktoken's download); with
$NANOVERSE_DATA also the lyrics, poems and Bengali Dakshina words for more encoding rows.
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
import prepare_data  # noqa: E402


def best_of(repeats, function):
    """(smallest wall time in seconds, last result) over `repeats` calls."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def gpt2_pair():
    """(tiktoken's GPT-2 encoding, bpe.py's), both from the mirror's two files when present, so nothing downloads."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    folder = Path(os.environ.get("NANOVERSE_DATA", "")) / "gpt2"
    if not os.environ.get("NANOVERSE_DATA") or not (folder / "vocab.bpe").is_file():
        return tiktoken.get_encoding("gpt2"), bpe.gpt2_tokenizer()
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(folder / "vocab.bpe"),
                                            encoder_json_file=str(folder / "encoder.json"))
    pattern = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""  # tiktoken's
    encoding = tiktoken.Encoding(name="gpt2", pat_str=pattern, mergeable_ranks=ranks,
                                 special_tokens={"<|endoftext|>": 50256})
    return encoding, bpe.Tokenizer.from_gpt2_files(folder / "encoder.json", folder / "vocab.bpe")


def bench_training(text, reference, repeats, minbpe_dir):
    """vocab 512 = 256 merges and no special token, as minbpe counts; vocab 4096 = 3840 merges."""
    rows, fast = [], {}
    for vocab_size in (512, 4096):
        seconds, tokenizer = best_of(repeats, lambda: bpe.Tokenizer.train(text, vocab_size, special_tokens=()))
        fast[vocab_size] = (seconds, tokenizer.merges)
        rows.append((f"train vocab {vocab_size}", "bpe.py fast trainer", f"{seconds:.2f} s",
                     f"{len(tokenizer.merges)} merges"))
    if reference:
        seconds, tokenizer = best_of(1, lambda: bpe.Tokenizer.train(text, 512, special_tokens=(), trainer="reference"))
        same = list(tokenizer.merges.items()) == list(fast[512][1].items())
        rows.append(("train vocab 512", "bpe.py reference trainer", f"{seconds:.1f} s",
                     f"identical merges: {same}; {seconds / fast[512][0]:.0f}x the fast trainer's time"))
    if minbpe_dir:
        sys.path.insert(0, str(Path(minbpe_dir).resolve()))
        from minbpe import RegexTokenizer
        from minbpe.regex import GPT2_SPLIT_PATTERN

        seconds, _ = best_of(1, lambda: RegexTokenizer(GPT2_SPLIT_PATTERN).train(text, 512))
        rows.append(("train vocab 512", "minbpe RegexTokenizer", f"{seconds:.1f} s",
                     f"bpe.py's fast trainer is {seconds / fast[512][0]:.0f}x faster (same run)"))
    return rows


def bench_encoding(texts, repeats):
    encoding, tokenizer = gpt2_pair()
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
    parser.add_argument("--minbpe", default="", help="a checkout of github.com/karpathy/minbpe to time side by side")
    args = parser.parse_args(argv)
    shakespeare = prepare_data.tiny_shakespeare()
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
    rows = bench_training(shakespeare, args.reference, args.repeats, args.minbpe) + bench_encoding(texts, args.repeats)
    print(f"bpe.py benchmark: Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"best of {args.repeats} (reference trainer and minbpe: 1 run)\n")
    header = ("task", "implementation", "time / speed", "notes")
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(4)]
    for row in [header, tuple("-" * w for w in widths)] + rows:
        print("| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |")


if __name__ == "__main__":
    main()
