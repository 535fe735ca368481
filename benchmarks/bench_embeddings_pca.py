"""Benchmark for embeddings_pca.py: how fast the co-occurrence matrix is built, and how good the vectors are.

Corpus: Tiny Shakespeare + the song lyrics + the Poetry Foundation poems (about 2 million words), vocabulary of the
20,000 most frequent words, window 4. Prints the build time and peak memory (with a plain Python loop over the same
pairs for scale), then one table: Spearman rho on WordSim-353, SimLex-999 and MEN and analogy accuracy (3CosAdd,
3CosMul) for raw counts, log counts, PPMI (alpha 1) and PPMI with alpha 0.75, at 2 and 100 dimensions, next to the
GloVe excerpt in the data mirror, all on exactly the pairs and questions both cover.

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

    table_rows, columns, pca_seconds = [], None, {}
    settings = [("raw", "raw", 1.0, args.dim), ("log", "log", 1.0, args.dim), ("PPMI a=1", "ppmi", 1.0, args.dim),
                ("PPMI a=0.75", "ppmi", 0.75, args.dim)] + [("PPMI a=0.75", "ppmi", 0.75, args.extra_dim)] * (
                    args.extra_dim > 0)
    for label, weighting, alpha, k in settings:
        started = time.perf_counter()
        result = ep.pca(ep.weight_matrix(counts, weighting, alpha), k, "randomized", seed=0)
        pca_seconds[f"{label} ({k} axes)"] = time.perf_counter() - started
        shapes = [(2, 1.0), (k, 1.0), (k, 0.5), (k, 0.0)] if k == args.dim else [(k, 0.5), (k, 0.0)]
        for dim, power in shapes:
            ours = ep.word_vectors_from_pca(f"{label}, {dim}d, p={power:g}", words, result, dim, power)
            rows, columns = ep.compare([ours, glove], similarity_sets, analogies, log=lambda *_: None)
            table_rows.append(rows[0])
    table_rows.append(rows[1])
    for wv in (ours, glove):  # coverage on each model's own, before taking the common part
        for name, pairs in similarity_sets.items():
            covered = sum(a in wv.index and b in wv.index for a, b, _ in pairs)
            print(f"coverage {name}: {wv.name.split(',')[0]} {covered}/{len(pairs)}", end="; ")
        print()
    print("\nAll rows on the same pairs/questions (both words known to ours and GloVe); analogy answers searched among "
          "the words both know. p is the eigenvalue power: vectors = U * S**p (p=1 are PCA coordinates).\n")
    print(ep.format_table(table_rows, columns))
    ws353 = columns[0]
    for prefix in ("PPMI", f"PPMI a=0.75, {args.dim}d", "raw"):
        best = max((row for row in table_rows if row["model"].startswith(prefix)), key=lambda row: row[ws353])
        print(f"best {prefix} on {ws353}: {best['model']} {best[ws353]:.3f}; GloVe {rows[1][ws353]:.3f}; "
              f"gap {rows[1][ws353] - best[ws353]:.3f}")
    print("PCA seconds (randomized, 2k + 10 directions, 6 power iterations): "
          + ", ".join(f"{name} {seconds:.1f}" for name, seconds in pca_seconds.items()))


if __name__ == "__main__":
    main()
