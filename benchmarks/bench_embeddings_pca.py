"""Benchmark for embeddings_pca.py: how fast the default run and the co-occurrence matrix are, and how good the vectors.

First the default run (`python embeddings_pca.py`, Tiny Shakespeare) timed end to end in a subprocess. Then the
corpus Tiny Shakespeare + song lyrics + Poetry Foundation poems (about 2 million words; lyrics and poems as
prepare_data.py cleanses them), vocabulary of the 20,000 most frequent words, window 4: the build time and peak memory
of the matrix (with a plain Python loop over the same pairs for scale), then one table: Spearman rho on WordSim-353,
SimLex-999 and MEN and analogy accuracy (3CosAdd) for raw counts, log counts, PPMI (alpha 1) and PPMI with alpha 0.75,
at 2 and 100 dimensions, next to the GloVe excerpt in the data mirror, all on exactly the pairs and questions both
cover. A second table repeats PPMI with a wide window (16 words, pairs weighted 1/distance, the script's default);
its `PPMI a=1, 300d, p=0.5` row is `python embeddings_pca.py --input shakespeare,lyrics,poems --min_count 1 --alpha 1
--dim 300`. Because the window was chosen by looking at WS353, each row also reports rho on the WS353 pairs that only
our vocabulary covers (the GloVe excerpt lacks a word): pairs that played no part in the comparison.

Run (from the repository folder; the lyrics and poems need the data mirror):
    export NANOVERSE_DATA=../shared/data
    python prepare_data.py lyrics --tokenizer char && python prepare_data.py poems --tokenizer char
    flock /tmp/nanoverse-bench.lock python benchmarks/bench_embeddings_pca.py
"""

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import embeddings_pca as ep  # noqa: E402


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def python_loop_counts(sentences, word_to_id, window):
    """The obvious way: one dictionary update per pair. Kept only as the speed reference."""
    counts = Counter()
    for words in sentences:
        ids = [word_to_id.get(word, -1) for word in words]  # unknown words keep their place
        for i, w in enumerate(ids):
            for c in ids[i + 1:i + window + 1]:
                if w >= 0 and c >= 0:
                    counts[w, c] += 1
                    counts[c, w] += 1
    return counts


def time_default_run(repeats):
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out_dir:
            started = time.perf_counter()
            subprocess.run([sys.executable, "embeddings_pca.py", "--out_dir", out_dir], cwd=ROOT, check=True,
                           capture_output=True)
            times.append(time.perf_counter() - started)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default="shakespeare,lyrics,poems", help="corpus, as embeddings_pca.py --input")
    parser.add_argument("--max_vocab", type=int, default=20000, help="vocabulary size")
    parser.add_argument("--window", type=int, default=4, help="context window on each side")
    parser.add_argument("--dim", type=int, default=100, help="dimensions kept for the high-dimensional rows")
    parser.add_argument("--extra_dim", type=int, default=300, help="also PPMI at this many dims, 0 = no")
    parser.add_argument("--wide_window", type=int, default=16, help="window of the second table (1/d weighted), 0 = no")
    parser.add_argument("--default_runs", type=int, default=3, help="times `python embeddings_pca.py` is run, 0 = no")
    parser.add_argument("--skip_python_loop", action="store_true", help="do not time the plain Python loop")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.default_runs:
        times = time_default_run(args.default_runs)
        print(f"default run (python embeddings_pca.py, Tiny Shakespeare, GloVe excerpt, wall clock incl. start-up): "
              f"{', '.join(f'{t:.1f}' for t in times)} s, median {np.median(times):.1f} s")

    baseline = peak_rss_mib()
    started = time.perf_counter()
    ep.check(ep.Config(input=args.input))  # a missing cleansed.txt: say which prepare_data.py command to run
    sentences = ep.tokenize(ep.load_corpus(args.input))
    words, coverage = ep.build_vocabulary(sentences, 1, args.max_vocab)
    word_to_id = {word: i for i, word in enumerate(words)}
    read_seconds = time.perf_counter() - started
    started = time.perf_counter()
    counts = ep.count_cooccurrences(sentences, word_to_id, args.window)
    build_seconds = time.perf_counter() - started
    peak = peak_rss_mib()
    print(f"corpus: {len(sentences):,} sentences, {sum(map(len, sentences)):,} words, vocabulary {len(words):,} "
          f"(covers {coverage:.1%} of tokens), window {args.window}")
    print(f"read + tokenize + vocabulary: {read_seconds:.1f} s")
    print(f"co-occurrence matrix (vectorised): {build_seconds:.1f} s, {counts.values().numel():,} non-zero, "
          f"peak RSS {peak:,.0f} MiB ({peak - baseline:,.0f} MiB above the {baseline:,.0f} MiB after imports)")
    if not args.skip_python_loop:
        started = time.perf_counter()
        reference = python_loop_counts(sentences, word_to_id, args.window)
        loop_seconds = time.perf_counter() - started
        (rows, cols), values = counts.indices().tolist(), counts.values().tolist()
        same = len(reference) == len(values) and all(reference[r, c] == v for r, c, v in zip(rows, cols, values))
        print(f"co-occurrence matrix (python loop): {loop_seconds:.1f} s, identical counts: {same}")

    similarity_sets, analogies = ep.load_evaluation(print)
    glove = ep.load_pretrained("mirror", print)
    ours_only = [pair for pair in similarity_sets["WS353"] if pair[0] in word_to_id and pair[1] in word_to_id
                 and not (pair[0] in glove.index and pair[1] in glove.index)]
    held_out = f"WS353 ours-only ({len(ours_only)})"

    def rho(wv, pairs):
        cosines = [float(wv.unit[wv.index[a]] @ wv.unit[wv.index[b]]) for a, b, _ in pairs]
        return ep.spearman(cosines, [score for *_, score in pairs])

    def table(counts, settings):
        """One row per setting and shape, scored with GloVe on the shared items, plus rho on the ours-only pairs."""
        table_rows, columns = [], None
        for label, weighting, alpha, k, shapes in settings:
            started = time.perf_counter()
            result = ep.pca(ep.weight_matrix(counts, weighting, alpha), k, "randomized", seed=0)
            pca_seconds[f"{label} ({k} axes)"] = time.perf_counter() - started
            for dim, power in shapes:
                U = result.scores / result.singular_values.clamp(min=1e-12)  # as embeddings_pca.run does
                vectors = (U * result.singular_values ** power)[:, :dim].float().numpy()
                ours = ep.WordVectors(f"{label}, {dim}d, p={power:g}", words, vectors)
                rows, columns = ep.compare([ours, glove], similarity_sets, analogies, log=lambda *_: None)
                rows[0][held_out] = rho(ours, ours_only)
                table_rows.append(rows[0])
        rows[1][held_out] = float("nan")
        return table_rows + [rows[1]], columns + [held_out]

    pca_seconds = {}
    shapes = [(2, 1.0), (args.dim, 1.0), (args.dim, 0.5), (args.dim, 0.0)]
    settings = [("raw", "raw", 1.0, args.dim, shapes), ("log", "log", 1.0, args.dim, shapes),
                ("PPMI a=1", "ppmi", 1.0, args.dim, shapes), ("PPMI a=0.75", "ppmi", 0.75, args.dim, shapes)]
    if args.extra_dim:
        settings.append(("PPMI a=0.75", "ppmi", 0.75, args.extra_dim, [(args.extra_dim, 0.5), (args.extra_dim, 0.0)]))
    table_rows, columns = table(counts, settings)
    glove_row = table_rows[-1]
    for wv in (ep.WordVectors("ours", words, np.zeros((len(words), 2), np.float32)), glove):  # own coverage
        print(f"coverage {wv.name}: " + "; ".join(f"{name} {sum(a in wv.index and b in wv.index for a, b, _ in pairs)}/"
                                                 f"{len(pairs)}" for name, pairs in similarity_sets.items()))
    print("\nAll rows on the same pairs/questions (both words known to ours and GloVe); analogy answers searched among "
          "the words both know. p is the eigenvalue power: vectors = U * S**p (p=1 are PCA coordinates). The last "
          "column scores the WS353 pairs only our vocabulary covers.\n")
    print(f"window {args.window}, every pair counted 1:")
    print(ep.format_table(table_rows, columns))
    ws353 = columns[0]
    for prefix in ("PPMI", f"PPMI a=0.75, {args.dim}d", "raw"):
        best = max((row for row in table_rows if row["model"].startswith(prefix)), key=lambda row: row[ws353])
        print(f"best {prefix} on {ws353}: {best['model']} {best[ws353]:.3f}; GloVe {glove_row[ws353]:.3f}; "
              f"gap {glove_row[ws353] - best[ws353]:.3f}")
    if args.wide_window:
        started = time.perf_counter()
        wide = ep.count_cooccurrences(sentences, word_to_id, args.wide_window, distance_weighting=True)
        print(f"\nwindow {args.wide_window}, a pair d words apart counted 1/d (matrix built in "
              f"{time.perf_counter() - started:.1f} s, {wide.values().numel():,} non-zero):")
        wide_settings = [("wide PPMI a=1", "ppmi", 1.0, args.dim, shapes[2:]),
                         ("wide PPMI a=0.75", "ppmi", 0.75, args.dim, shapes[2:])]
        if args.extra_dim:
            wide_settings += [("wide PPMI a=1", "ppmi", 1.0, args.extra_dim, [(args.extra_dim, 0.5),
                                                                             (args.extra_dim, 0.0)])]
        wide_rows, _ = table(wide, wide_settings)
        print(ep.format_table(wide_rows, columns))
        best = max(wide_rows[:-1], key=lambda row: row[ws353])
        print(f"best wide PPMI on {ws353}: {best['model']} {best[ws353]:.3f}; GloVe {glove_row[ws353]:.3f}; "
              f"gap {glove_row[ws353] - best[ws353]:.3f}; on {held_out}: {best[held_out]:.3f}")
    print("PCA seconds (randomized, 2k + 10 directions, 6 power iterations): "
          + ", ".join(f"{name} {seconds:.1f}" for name, seconds in pca_seconds.items()))


if __name__ == "__main__":
    main()
