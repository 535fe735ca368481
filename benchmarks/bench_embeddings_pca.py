"""Benchmark for embeddings_pca.py: how fast the co-occurrence matrix is built, and how good the vectors are.

Corpus: Tiny Shakespeare + the song lyrics + the Poetry Foundation poems (about 2 million words), vocabulary of the
20,000 most frequent words, window 4. Prints the build time and peak memory (with a plain Python loop over the same
pairs for scale), then one table: Spearman rho on WordSim-353, SimLex-999 and MEN and analogy accuracy (3CosAdd,
3CosMul) for raw counts, log counts, PPMI (alpha 1) and PPMI with alpha 0.75, at 2 and 100 dimensions, next to the
GloVe excerpt in the data mirror, all on exactly the pairs and questions both cover. A second table repeats PPMI with a
wide window (16 words, pairs weighted 1/distance), the setting that closes most of the gap to GloVe. Because that
setting was chosen by looking at WS353, each row also reports rho on the WS353 pairs that only our vocabulary covers
(the GloVe excerpt lacks a word): pairs that played no part in the comparison, a check that the gain is not noise.

Run:
    NANOVERSE_DATA=../shared/data python benchmarks/bench_embeddings_pca.py
"""

import argparse
import resource
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import embeddings_pca as ep  # noqa: E402


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def python_loop_counts(token_ids, sentence_ids, window):
    """The obvious way: one dictionary update per pair. Kept only as the speed reference."""
    counts = Counter()
    tokens, sentences = token_ids.tolist(), sentence_ids.tolist()
    for i, (w, s) in enumerate(zip(tokens, sentences)):
        if w < 0:
            continue
        for j in range(i + 1, min(i + window + 1, len(tokens))):
            if sentences[j] != s:
                break
            if tokens[j] >= 0:
                counts[w, tokens[j]] += 1
                counts[tokens[j], w] += 1
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default="shakespeare,lyrics,poems", help="corpus, as embeddings_pca.py --input")
    parser.add_argument("--max_vocab", type=int, default=20000, help="vocabulary size")
    parser.add_argument("--window", type=int, default=4, help="context window on each side")
    parser.add_argument("--dim", type=int, default=100, help="dimensions kept for the high-dimensional rows")
    parser.add_argument("--extra_dim", type=int, default=300, help="also PPMI (alpha 0.75) at this many dims, 0 = no")
    parser.add_argument("--wide_window", type=int, default=16, help="window of the second table (1/d weighted), 0 = no")
    parser.add_argument("--skip_python_loop", action="store_true", help="do not time the plain Python loop")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    baseline = peak_rss_mib()
    started = time.perf_counter()
    sentences = ep.tokenize(ep.load_corpus(args.input))
    words, coverage = ep.build_vocabulary(sentences, 1, args.max_vocab)
    read_seconds = time.perf_counter() - started
    started = time.perf_counter()
    token_ids, sentence_ids = ep.encode(sentences, {word: i for i, word in enumerate(words)})
    counts = ep.count_cooccurrences(token_ids, sentence_ids, len(words), args.window)
    build_seconds = time.perf_counter() - started
    peak = peak_rss_mib()
    n_tokens = len(token_ids)
    print(f"corpus: {len(sentences):,} sentences, {n_tokens:,} words, vocabulary {len(words):,} "
          f"(covers {coverage:.1%} of tokens), window {args.window}")
    print(f"read + tokenize + vocabulary: {read_seconds:.1f} s")
    print(f"co-occurrence matrix (vectorised): {build_seconds:.1f} s, {counts.values().numel():,} non-zero, "
          f"peak RSS {peak:,.0f} MiB ({peak - baseline:,.0f} MiB above the {baseline:,.0f} MiB after imports)")
    if not args.skip_python_loop:
        started = time.perf_counter()
        reference = python_loop_counts(token_ids, sentence_ids, args.window)
        loop_seconds = time.perf_counter() - started
        (rows, cols), values = counts.indices().tolist(), counts.values().tolist()
        same = len(reference) == len(values) and all(reference[r, c] == v for r, c, v in zip(rows, cols, values))
        print(f"co-occurrence matrix (python loop): {loop_seconds:.1f} s, identical counts: {same}")

    data = Path(ep.find_data("word_similarity/wordsim353/combined.csv")).parents[1]
    similarity_sets = {name: ep.load_similarity_pairs(data / relative, *layout)
                       for name, (relative, *layout) in ep.SIMILARITY_SETS.items()}
    analogies = ep.load_analogies(data / "analogy" / "questions-words.txt")
    glove = ep.load_text_vectors(ep.find_data("embeddings/glove.6B.50d.first2446.txt"), "GloVe 6B 50d (excerpt)")

    ours_only = [pair for pair in similarity_sets["WS353"] if pair[0] in words and pair[1] in words
                 and not (pair[0] in glove.index and pair[1] in glove.index)]
    held_out = f"WS353 ours-only ({len(ours_only)})"

    def table(counts, settings):
        """One row per setting and shape, scored with GloVe on the shared items, plus rho on the ours-only pairs."""
        table_rows, columns = [], None
        for label, weighting, alpha, k, shapes in settings:
            started = time.perf_counter()
            result = ep.pca(ep.weight_matrix(counts, weighting, alpha), k, "randomized", seed=0)
            pca_seconds[f"{label} ({k} axes)"] = time.perf_counter() - started
            for dim, power in shapes:
                ours = ep.word_vectors_from_pca(f"{label}, {dim}d, p={power:g}", words, result, dim, power)
                rows, columns = ep.compare([ours, glove], similarity_sets, analogies, log=lambda *_: None)
                rows[0][held_out] = ep.similarity_rho(ours, ours_only)
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
    for wv in (ep.WordVectors("ours", words, torch.zeros(len(words), 2).numpy()), glove):  # each model's own coverage
        for name, pairs in similarity_sets.items():
            covered = sum(a in wv.index and b in wv.index for a, b, _ in pairs)
            print(f"coverage {name}: {wv.name} {covered}/{len(pairs)}", end="; ")
        print()
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
        wide = ep.count_cooccurrences(token_ids, sentence_ids, len(words), args.wide_window, distance_weighting=True)
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
