"""Word vectors by counting: co-occurrence counts, reweighted, reduced by PCA, drawn beside GloVe, and scored.

"You shall know a word by the company it keeps" (Firth 1957). We count how often each pair of words appears within a
few positions of each other, reweight the counts (raw, log, row-normalised or PPMI), keep the top principal components
as word vectors and set them beside pretrained GloVe vectors: a 2-D picture, nearest neighbours, Spearman correlation
with human similarity judgements and analogy accuracy, on exactly the word pairs both models know. The picture
(out/embeddings_pca/words_2d.png) reduces each model's plotted words to 2-D by a PCA of just those words; its arrows
man -> woman and king -> queen are parallel where the vectors share one "gender" offset and the two axes show it (try
--plot_words king,queen,man,woman: GloVe's come out nearly parallel, ours from one small corpus do not).
--input: .txt files, folders of them, `shakespeare` (shipped in datasets/: no network needed), or `lyrics` / `poems`
from data/<name>/cleansed.txt, which `python prepare_data.py <name>` writes. --pretrained: `mirror` (the data mirror's
2,446-word GloVe excerpt), `auto` (the 50-d GloVe 6B vectors, gensim-data's glove-wiki-gigaword-50: 69 MB, downloaded
once into data/pretrained/), `none`, or a GloVe or word2vec text file. References: Church & Hanks 1990 (PMI); Levy,
Goldberg & Dagan 2015 (PPMI, smoothing, eigenvalue weighting); Halko, Martinsson & Tropp 2011 (randomized SVD).

Run:
    python embeddings_pca.py                       # CPU, 10-15 s: Tiny Shakespeare, 100-d PPMI vectors
    python embeddings_pca.py --pretrained auto     # beside the full GloVe (one 69 MB download, then cached)
    python embeddings_pca.py --input shakespeare,lyrics,poems --min_count 1 --alpha 1 --dim 300 --device cuda  # GPU
    Colab: paste this file into a cell and run it; then main(["--pretrained", "auto"]) in the next one.
"""

import argparse
import difflib
import gzip
import hashlib
import inspect
import os
import re
import sys
import tempfile
import urllib.request
import warnings
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox
from tqdm import tqdm


@dataclass
class Config:
    input: str = "shakespeare"  # comma-separated .txt files, folders of them, or shakespeare / lyrics / poems
    max_sentences: int = 0  # use only the first N sentences, 0 = all (the classic exercise uses 5,000-10,000)
    min_count: int = 5  # words seen fewer times than this are left out of the vocabulary
    max_vocab: int = 20000  # keep at most this many of the most frequent words
    window: int = 16  # how many words on each side of a word count as its context
    distance_weighting: bool = True  # count a pair d words apart as 1/d instead of 1 (as GloVe does)
    weighting: str = "ppmi"  # how counts become the matrix that PCA reduces
    alpha: float = 0.75  # PPMI context-distribution smoothing exponent (1 = plain PPMI)
    dim: int = 100  # principal components kept as word vectors
    eigenvalue_power: float = 0.5  # vectors are U * S**p: 1 = the PCA coordinates, 0.5 or 0 weigh the axes more evenly
    svd: str = "auto"  # auto = exact up to 1,000 words or columns (a full SVD costs O(n^3)), else randomized
    plot_words: str = "king,queen,man,woman,father,mother,son,daughter,love,heart,night,day"  # words drawn in 2-D
    neighbours_of: str = "king,love,night,heart"  # words whose nearest neighbours are printed
    pretrained: str = "mirror"  # vectors to compare with: mirror | auto | none | a GloVe or word2vec text file
    out_dir: str = "out/embeddings_pca"  # the picture, the score table and our vectors (vectors.txt) go here
    device: str = "auto"  # where the SVD runs: auto = cuda if present, else cpu (mps has no float64)


CHOICES = {"weighting": ("raw", "log", "rownorm", "ppmi"), "svd": ("auto", "exact", "randomized"),
           "device": ("auto", "cpu", "cuda")}

# %% Words, vocabulary, co-occurrence counts
# A sentence ends at . ! ? or a blank line (a stanza or a speech); single line breaks inside verse do not end one.
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")
# A word is a run of letters, with inner apostrophes kept (can't, o'er, know't); digits and punctuation are dropped.
WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")


def tokenize(text):
    """Lower-cased word tokens, one list per sentence."""
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    return [words for words in (WORD.findall(sentence) for sentence in SENTENCE_END.split(text)) if words]


def build_vocabulary(sentences, min_count, max_vocab):
    """The most frequent words (ties broken alphabetically, so runs are reproducible), and the share of tokens kept."""
    counts = Counter(word for words in sentences for word in words)
    kept = sorted((item for item in counts.items() if item[1] >= min_count), key=lambda item: (-item[1], item[0]))
    words = [word for word, _ in kept[:max_vocab]]
    return words, sum(counts[word] for word in words) / max(sum(counts.values()), 1)


def count_cooccurrences(sentences, word_to_id, window, distance_weighting=False):
    """X[w, c] = sum over positions i, j in the same sentence with 0 < |i - j| <= window, w_i = w, w_j = c, of
    weight(|i - j|): 1, or 1/d with distance_weighting, since a word right beside w says more about w than one ten
    words away (GloVe weighs pairs the same way). X is symmetric by construction.

    No loop over tokens: the text becomes one flat array of word ids (-1 outside the vocabulary: such words keep their
    place, so distance is distance in the text) with each token's sentence number beside it. For each offset d we pair
    the array with itself shifted by d, keep the pairs inside one sentence and the vocabulary, and let a sparse tensor
    add up repeated (w, c) pairs (coalesce): memory stays near the size of the matrix, not of all pairs at once.
    """
    token_ids = np.fromiter((word_to_id.get(w, -1) for words in sentences for w in words), dtype=np.int64)
    sentence_ids = np.repeat(np.arange(len(sentences)), [len(words) for words in sentences])
    shape = (len(word_to_id), len(word_to_id))
    one_way = torch.zeros(shape, dtype=torch.float64, layout=torch.sparse_coo)
    for d in range(1, window + 1):
        left, right = token_ids[:-d], token_ids[d:]
        keep = (sentence_ids[:-d] == sentence_ids[d:]) & (left >= 0) & (right >= 0)
        pairs = torch.from_numpy(np.stack([left[keep], right[keep]]))  # (2, n_pairs): word, context d to its right
        weights = torch.full((pairs.shape[1],), 1.0 / d if distance_weighting else 1.0, dtype=torch.float64)
        one_way = (one_way + torch.sparse_coo_tensor(pairs, weights, shape, check_invariants=True)).coalesce()
    return (one_way + one_way.t()).coalesce()  # each pair was seen left-to-right; add right-to-left to make X symmetric


# %% Weighting: raw, log, row-normalised, PPMI
def weight_matrix(counts, weighting, alpha=0.75):
    """Reweight a sparse count matrix. Every scheme maps a zero count to zero, so the result stays sparse.

    raw: X.  log: log(1 + X), which tames the huge counts of "the" and "and".  rownorm: X / rowsum = P(c | w).
    ppmi: PMI(w, c) = log P(w, c) / (P(w) P_alpha(c)), how much more often w and c meet than chance would have them,
    kept where positive (Church & Hanks 1990; Bullinaria & Levy 2007). P_alpha(c) = count(c)^alpha / sum_c'
    count(c')^alpha gives rare contexts a little more probability, so they no longer get inflated PMI: context-
    distribution smoothing (Levy, Goldberg & Dagan 2015; alpha = 0.75 as in word2vec's negative sampling). Unseen pairs
    would have PMI = -inf; PPMI sets them, and all negatives, to 0.
    """
    (rows, cols), values = counts.indices(), counts.values()
    row_sums = torch.zeros(counts.shape[0], dtype=values.dtype).index_add_(0, rows, values)
    col_sums = torch.zeros(counts.shape[1], dtype=values.dtype).index_add_(0, cols, values)
    if weighting == "ppmi":
        total, smoothed_context = values.sum(), col_sums ** alpha / (col_sums ** alpha).sum()
        pmi = torch.log(values / total) - torch.log(row_sums[rows] / total) - torch.log(smoothed_context[cols])
        new_values = pmi.clamp(min=0)
    else:
        new_values = {"raw": values, "log": torch.log1p(values), "rownorm": values / row_sums[rows]}[weighting]
    return torch.sparse_coo_tensor(counts.indices(), new_values, counts.shape, check_invariants=True).coalesce()


# %% PCA: exact and randomized
@dataclass
class PCAResult:
    scores: torch.Tensor  # (n, k) U * S: each row's coordinates along the principal axes
    singular_values: torch.Tensor  # (k,)
    components: torch.Tensor  # (k, m) the principal axes, orthonormal rows (Vt)
    explained_variance_ratio: torch.Tensor  # (k,) share of the total variance along each axis


def pca(matrix, k, method="auto", n_iter=6, seed=0):
    """PCA of the rows of matrix (dense or sparse): centre each column, then SVD, X - mean = U S Vt.

    The principal axes are the rows of Vt, the coordinates are U S, and axis i explains s_i^2 / ||X - mean||_F^2 of
    the variance. 'exact' takes the full SVD of the centred dense matrix. 'randomized' never forms it (a sparse 20,000
    x 20,000 matrix would become 3 GB dense): it multiplies by the centred matrix implicitly,
    (X - 1 mean) Q = X Q - 1 (mean Q), inside Halko, Martinsson & Tropp's randomized subspace iteration (2011,
    algorithms 4.4 and 5.1): find an orthonormal Q whose span holds the top-k range of X - mean, then take the small
    SVD of Q^T (X - mean).
    """
    n_rows, n_cols = matrix.shape
    k = min(k, n_rows, n_cols)
    method = ("exact" if min(n_rows, n_cols) <= 1000 else "randomized") if method == "auto" else method
    is_sparse = matrix.layout != torch.strided
    mean = (torch.sparse.sum(matrix, dim=0).to_dense() if is_sparse else matrix.sum(0)) / n_rows  # (m,)
    squares = (matrix.values() ** 2).sum() if is_sparse else (matrix ** 2).sum()
    total_variance = squares - n_rows * (mean ** 2).sum()  # ||X - 1 mean||_F^2 without forming X - 1 mean
    if method == "exact":
        U, S, Vt = torch.linalg.svd((matrix.to_dense() if is_sparse else matrix) - mean, full_matrices=False)
        U, S, Vt = U[:, :k], S[:k], Vt[:k]
    else:
        with warnings.catch_warnings(action="ignore"):  # torch calls its sparse CSR support "beta"; we only multiply
            transposed = matrix.t().coalesce().to_sparse_csr() if is_sparse else matrix.t()
            matrix = matrix.to_sparse_csr() if is_sparse else matrix  # CSR: fast sparse @ dense products
        times = lambda Q: matrix @ Q - mean[None, :] @ Q  # noqa: E731  (X - 1 mean) Q, the mean row broadcast
        times_transposed = lambda Q: transposed @ Q - mean[:, None] * Q.sum(0)  # noqa: E731  (X - 1 mean)^T Q
        generator = torch.Generator(device="cpu").manual_seed(seed)
        # Oversample: sketch 2k + 10 directions for k axes. PPMI's spectrum decays slowly, and with only k + 10 the
        # last axes come out too short (benchmarks/RESULTS.md).
        sketch = torch.randn(n_cols, 2 * k + 10, generator=generator, dtype=mean.dtype).to(mean.device)
        Q = torch.linalg.qr(times(sketch)).Q
        for _ in range(n_iter):  # each round sharpens the gap between wanted and unwanted singular values
            Q = torch.linalg.qr(times(torch.linalg.qr(times_transposed(Q)).Q)).Q
        U_small, S, Vt = torch.linalg.svd(times_transposed(Q).t(), full_matrices=False)  # Q^T (X - mean), small
        U, S, Vt = (Q @ U_small)[:, :k], S[:k], Vt[:k]
    # SVD signs are arbitrary; make each axis's largest coordinate positive so that runs and pictures are repeatable.
    signs = torch.where(U.gather(0, U.abs().argmax(0, keepdim=True))[0] < 0, -1.0, 1.0).to(U.dtype)
    U, Vt = U * signs, Vt * signs[:, None]
    return PCAResult(U * S, S, Vt, S ** 2 / total_variance)


class WordVectors:
    def __init__(self, name, words, vectors):  # row i of vectors (n_words, dim) belongs to words[i]
        self.name, self.words, self.vectors = name, words, vectors
        self.index = {word: i for i, word in reversed(list(enumerate(words)))}  # a word given twice: its first row
        self.unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)  # for cosines


# %% The 2-D picture beside GloVe
def draw_words_2d(models, words, path):
    """One panel per model: the words' vectors reduced to 2-D by our pca(), fitted on these words alone, so that the
    two axes show how these words differ from each other. Returns each panel's label boxes, in pixels."""
    figure = Figure(figsize=(6.5 * len(models), 6))
    canvas, panels = FigureCanvasAgg(figure), []
    for axis, wv in zip(figure.subplots(1, len(models), squeeze=False)[0], models):
        known, missing = [w for w in words if w in wv.index], [w for w in words if w not in wv.index]
        title, points = wv.name + (f"\nnot in its vocabulary: {', '.join(missing)}" if missing else ""), {}
        if len(known) >= 2:
            result = pca(torch.from_numpy(wv.vectors[[wv.index[w] for w in known]]).double(), 2, "exact")
            points = dict(zip(known, result.scores.numpy()))
            title += f"\nPCA of these {len(known)} words: 2 axes hold {result.explained_variance_ratio.sum():.0%}"
            axis.scatter(*result.scores.numpy().T, color="tab:blue", s=18)
        for start, end, colour in (("man", "woman", "tab:red"), ("king", "queen", "tab:green")):
            if start in points and end in points:
                axis.annotate("", points[end], points[start], arrowprops=dict(arrowstyle="->", color=colour, lw=1.8))
                axis.plot([], [], color=colour, lw=1.8, label=f"{start} \u2192 {end}")  # the arrow's legend entry
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=9, title="parallel = one 'gender' offset", title_fontsize=9)
        axis.set(title=title, xlabel="principal axis 1 (of these words)", ylabel="principal axis 2")
        axis.margins(0.2)
        panels.append((axis, points))
    figure.tight_layout()  # first: placing the labels needs the final pixel positions of the points
    boxes = [place_labels(axis, points, canvas.get_renderer()) for axis, points in panels]
    write_atomic(path, lambda file: figure.savefig(file, dpi=110, format="png"))
    return boxes


# %% Nearest neighbours
def nearest_neighbours(wv, word, k):
    """The k most similar words by cosine; only words as our tokenizer sees them (GloVe also holds punctuation)."""
    similarity = wv.unit @ wv.unit[wv.index[word]]
    similarity[wv.index[word]] = -np.inf
    candidates = (i for i in np.argsort(-similarity, kind="stable") if WORD.fullmatch(wv.words[i]))
    return [(wv.words[i], float(similarity[i])) for i, _ in zip(candidates, range(k))]


# %% Scores on the pairs both models know
def average_ranks(values):
    """Ranks 1..n; tied values share the average of the ranks they span ([10, 20, 20, 30] -> [1, 2.5, 2.5, 4])."""
    values = np.asarray(values, dtype=np.float64)
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(1, len(values) + 1)
    _, group, size = np.unique(values, return_inverse=True, return_counts=True)
    return np.bincount(group, weights=ranks)[group] / size[group]


def spearman(x, y):
    """Spearman's rho: Pearson's correlation of the ranks (correct with ties, unlike 1 - 6 sum d^2 / n(n^2 - 1))."""
    with warnings.catch_warnings(action="ignore"):  # fewer than 2 pairs, or all ranks tied: no order, rho is nan
        return float(np.corrcoef(average_ranks(x), average_ranks(y))[0, 1])


def analogy_accuracy(wv, questions, candidates, batch_size=256):
    """Share of a:b :: c:d answered d by 3CosAdd, argmax_d cos(d, b) - cos(d, a) + cos(d, c), i.e. the word nearest to
    b - a + c (Mikolov et al. 2013), searching only among `candidates` and never answering a, b or c."""
    position = {word: i for i, word in enumerate(candidates)}
    unit = wv.unit[[wv.index[word] for word in candidates]]
    ids = np.array([[position[word] for word in question] for question in questions])
    correct = 0
    for start in range(0, len(ids), batch_size):
        batch = ids[start:start + batch_size]  # (B, 4)
        scores = (unit[batch[:, 1]] - unit[batch[:, 0]] + unit[batch[:, 2]]) @ unit.T  # (B, n_candidates)
        np.put_along_axis(scores, batch[:, :3], -np.inf, axis=1)
        correct += int((scores.argmax(1) == batch[:, 3]).sum())
    return correct / len(ids)


def compare(models, similarity_sets, analogies, log=print):
    """Score every model on exactly the same items, the pairs and questions whose words all models know: a model that
    knows fewer words would otherwise be scored on easier, more frequent ones. Analogy answers are searched among the
    words all models know, so every model answers the same multiple choice."""
    shared = set.intersection(*(set(wv.index) for wv in models))
    rows = [{"model": wv.name, "dim": wv.vectors.shape[1], "words": len(wv.index)} for wv in models]
    tasks = {name: (pairs, 2) for name, pairs in similarity_sets.items()}  # items and how many words each names
    tasks |= {"analogies": (analogies, 4)} if analogies else {}
    for name, (items, n_words) in tasks.items():
        known = [sum(all(w in wv.index for w in item[:n_words]) for item in items) for wv in models]
        log(f"coverage {name}: " + ", ".join(f"{wv.name} knows every word of {n}/{len(items)}"
                                             for wv, n in zip(models, known)))
        common = [item for item in items if all(w in shared for w in item[:n_words])]
        column = (f"{name} rho" if n_words == 2 else "3CosAdd") + f" ({len(common)}/{len(items)})"
        for row, wv in zip(rows, models):
            if n_words == 2:  # how well the cosines order the pairs as people did
                cosines = [float(wv.unit[wv.index[a]] @ wv.unit[wv.index[b]]) for a, b, _ in common]
                row[column] = spearman(cosines, [score for *_, score in common])
            else:
                row[column] = analogy_accuracy(wv, common, sorted(shared)) if common else np.nan
    return rows, list(rows[0])[3:]


# %% Putting it together
def run(cfg, log=print):
    """Corpus -> counts -> weighting -> PCA -> picture, neighbours and scores beside GloVe. Returns the table rows."""
    check(cfg)
    glove = load_pretrained(cfg.pretrained, log)  # before the slow part: a bad file costs seconds, not minutes
    similarity_sets, analogies = load_evaluation(log)
    sentences = tokenize(load_corpus(cfg.input))[:cfg.max_sentences or None]
    words, coverage = build_vocabulary(sentences, cfg.min_count, cfg.max_vocab)
    if len(words) < 3:
        raise SystemExit(f"error: only {len(words)} words occur --min_count times; pass more text or lower --min_count")
    log(f"corpus: {len(sentences):,} sentences, {sum(map(len, sentences)):,} words; vocabulary {len(words):,} words "
        f"covering {coverage:.1%} of them")
    counts = count_cooccurrences(sentences, {w: i for i, w in enumerate(words)}, cfg.window, cfg.distance_weighting)
    log(f"co-occurrence matrix: {len(words):,}^2, {counts.values().numel() / len(words) ** 2:.2%} of it non-zero")
    device = cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    result = pca(weight_matrix(counts, cfg.weighting, cfg.alpha).to(device), cfg.dim, cfg.svd)
    ratios = result.explained_variance_ratio.cpu()
    log(f"PCA: the first axes explain {', '.join(f'{r:.3f}' for r in ratios[:5])}, ... of the variance; "
        f"all {len(ratios)} together {ratios.sum():.3f}")
    # Word vectors U * S**p: p = 1 gives the PCA coordinates, 0 makes every axis equally important. Lower powers help
    # on similarity tasks: the first axes of a count matrix carry frequency more than meaning (Levy et al. 2015).
    vectors = result.scores / result.singular_values.clamp(min=1e-12) * result.singular_values ** cfg.eigenvalue_power
    ours = WordVectors(f"ours ({cfg.weighting}, PCA)", words, vectors.float().cpu().numpy())
    models, out_dir = [ours] + ([glove] if glove is not None else []), Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    draw_words_2d(models, word_list(cfg.plot_words.lower()), out_dir / "words_2d.png")
    log(f"picture: {out_dir / 'words_2d.png'}")
    for word, wv in [(word, wv) for word in word_list(cfg.neighbours_of.lower()) for wv in models]:
        found = ", ".join(f"{w} {s:.2f}" for w, s in nearest_neighbours(wv, word, 8)) if word in wv.index \
            else "not in vocabulary"
        log(f"nearest to {word!r} in {wv.name}: {found}")
    rows, columns = compare(models, similarity_sets, analogies, log)
    log(table := format_table(rows, columns))
    write_atomic(out_dir / "results.md", (table + "\n").encode())
    lines = "".join(f"{w} {' '.join(f'{x:.5f}' for x in vector)}\n" for w, vector in zip(ours.words, ours.vectors))
    write_atomic(out_dir / "vectors.txt", lines.encode())  # GloVe's text format: --pretrained reads it back
    return rows


# %% Plumbing: data files and downloads, vector files, label placement, checks, command line (skip on a first read)
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()  # a notebook has no __file__
SHIPPED_SHAKESPEARE = HERE / "datasets" / "tinyshakespeare.txt.gz"  # char-rnn's text exactly, see datasets/README.md
GLOVE = {"mirror": "embeddings/glove.6B.50d.first2446.txt", "auto": "pretrained/glove-wiki-gigaword-50.gz"}
DOWNLOADS = {  # path under data/ -> (URL, bytes, checksum)
    "tinyshakespeare/input.txt": ("https://raw.githubusercontent.com/karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078"
                                  "e37c1d1b4e/data/tinyshakespeare/input.txt", 1_115_394,
                                  "sha256:86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
    # GloVe 6B 50d, 400,000 words in word2vec's text format; size and md5 (its only published checksum): gensim-data
    GLOVE["auto"]: ("https://github.com/RaRe-Technologies/gensim-data/releases/download/glove-wiki-gigaword-50/"
                    "glove-wiki-gigaword-50.gz", 69_182_535, "md5:c289bc5d7f2f02c6dc9f2f9b67641813")}
SIMILARITY_SETS = {  # name -> (path under word_similarity/, separator, lines before the first pair, score column)
    "WS353": ("wordsim353/combined.csv", ",", 1, 2), "SimLex": ("SimLex-999/SimLex-999.txt", "\t", 1, 3),
    "MEN": ("MEN/MEN_dataset_natural_form_full", " ", 0, 2)}


def write_atomic(path, data):
    """Write bytes (or let data(file) write) to a new file beside path, then rename it: never half a file at path."""
    handle, temporary = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            data(file) if callable(data) else file.write(data)
        os.chmod(temporary, 0o644)  # mkstemp makes a new owner-only file (never following a planted link)
        os.replace(temporary, path)
    except BaseException:  # a full disk, a failed download, Ctrl-C: no fragment is left behind
        Path(temporary).unlink(missing_ok=True)
        raise


def data_file(name):
    """A data file from $NANOVERSE_DATA or data/, or None. A known download missing there is fetched into data/
    with a progress bar and kept only if its byte count and checksum are the published ones."""
    for path in (Path(os.environ.get("NANOVERSE_DATA") or "/nonexistent") / name, Path("data") / name):
        if path.is_file():  # a download is renamed into place only once it is complete and checked
            return path
    if name not in DOWNLOADS:
        return None
    (url, size, checksum), chunks = DOWNLOADS[name], []  # path is data/<name> now
    try:
        with urllib.request.urlopen(url, timeout=60) as response, \
                tqdm(total=size, unit="B", unit_scale=True, desc=f"downloading {path.name}") as bar:
            while (block := response.read(1 << 20)) and bar.n <= size:  # a wrong server never fills the memory
                chunks.append(block)
                bar.update(len(block))
        algorithm, expected = checksum.split(":")
        if bar.n != size or hashlib.new(algorithm, b"".join(chunks)).hexdigest() != expected:
            raise OSError(f"got {bar.n:,} bytes that are not the expected file of {size:,} bytes")
    except OSError as error:  # offline, a server error, a connection that closed early, a wrong file
        raise SystemExit(f"error: could not download {url} ({getattr(error, 'reason', error)}); connect to the "
                         f"internet and run again, or put the file at {path} yourself") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, b"".join(chunks))
    return path


def corpus_files(item):
    """What one --input item names: the shipped Tiny Shakespeare, prepare_data.py's cleansed text, or .txt files."""
    if item == "shakespeare":
        return [SHIPPED_SHAKESPEARE]
    path = Path("data") / item / "cleansed.txt" if item in ("lyrics", "poems") else Path(item).expanduser()
    return sorted(path.rglob("*.txt")) if path.is_dir() else [path] if path.suffix == ".txt" and path.is_file() else []


def load_corpus(spec):
    """The text of every source in spec (comma-separated), documents separated by blank lines."""
    texts = []
    for file in [file for item in word_list(spec) for file in corpus_files(item)]:
        if file == SHIPPED_SHAKESPEARE and not file.is_file():  # this file pasted alone (Colab): download it once
            file = data_file("tinyshakespeare/input.txt")
        try:
            texts.append((gzip.decompress(file.read_bytes()) if file.suffix == ".gz" else file.read_bytes()).decode())
        except UnicodeDecodeError:
            raise SystemExit(f"error: {file} is not UTF-8 text; convert it (iconv -f cp1252 -t utf-8) first") from None
    return "\n\n".join(texts)


def load_text_vectors(path, name):
    """GloVe's text format, one 'word x1 ... xd' per line (word2vec's 'count dim' first line is skipped), plain or
    gzip-compressed, read with replacement: GloVe 6B holds a few raw non-UTF-8 bytes as words. Words are lower-cased."""
    words, rows = [], []
    with (gzip.open if str(path).endswith(".gz") else open)(path, "rt", encoding="utf-8", errors="replace") as file:
        for line_number, line in enumerate(file, 1):
            word, *numbers = line.rstrip().split(" ")
            if (line_number == 1 and len(numbers) == 1 and word.isdigit()) or not line.strip():
                continue
            try:
                rows.append(np.array(numbers, dtype=np.float32))
                if not numbers or len(numbers) != len(rows[0]):
                    raise ValueError("a different number of values")
            except ValueError:
                raise SystemExit(f"error: {path}, line {line_number}: expected a word and as many numbers as on the "
                                 f"first line, found {line[:60]!r}; pass a GloVe or word2vec text file") from None
            words.append(word.lower())
    if not rows:
        raise SystemExit(f"error: {path} holds no vectors; pass a vectors file in GloVe's text format")
    return WordVectors(name, words, np.stack(rows))


def load_pretrained(spec, log):
    """--pretrained: the mirror's GloVe excerpt, the full 50-d GloVe (downloaded once), a vectors file, or none."""
    path = data_file(GLOVE[spec]) if spec in GLOVE else None if spec == "none" else spec
    if path is None and spec == "mirror":
        log("no GloVe to compare with (no data mirror): pass --pretrained auto to download it once (69 MB)")
    return path and load_text_vectors(path, {"mirror": "GloVe 6B 50d excerpt", "auto": "GloVe 6B 50d"}.get(spec, spec))


def load_evaluation(log):
    """The similarity sets and the analogy questions, from $NANOVERSE_DATA/word_similarity/ or data/word_similarity/.
    In questions-words.txt 'a b c d' means a is to b as c is to d, and ': section' lines are headings."""
    sets, analogies = {}, None
    for name, (relative, separator, skip, column) in SIMILARITY_SETS.items():
        if path := data_file(f"word_similarity/{relative}"):
            lines = [line.split(separator) for line in path.read_text("utf-8").splitlines()[skip:] if line.strip()]
            sets[name] = [(parts[0].lower(), parts[1].lower(), float(parts[column])) for parts in lines]
    if path := data_file("word_similarity/analogy/questions-words.txt"):
        lines = path.read_text("utf-8").lower().splitlines()
        analogies = [tuple(line.split()) for line in lines if not line.startswith(":") and len(line.split()) == 4]
    if not sets:
        log("no word-similarity sets: set NANOVERSE_DATA to the data mirror (or copy its word_similarity/ into data/)")
    return sets, analogies


def format_table(rows, columns):
    lines = ["| model | dim | words | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 3)]
    return "\n".join(lines + ["| " + " | ".join([str(row["model"]), str(row["dim"]), str(row["words"])] +
                                                 [f"{row[c]:.3f}" for c in columns]) + " |" for row in rows])


def place_labels(axis, points, renderer):
    """Write each word beside its point where it covers no other label and no point: eight places around the point,
    tried at growing distances, the first free one taken (a far one gets a thin leader line). Returns the boxes."""
    taken = [Bbox.from_bounds(x - 4, y - 4, 8, 8) for x, y in axis.transData.transform(list(points.values()))]
    places = [(d * dx, d * dy) for d in (3, 9, 16, 24, 34, 46) for dx in (1, -1, 0) for dy in (1, -1, 0) if dx or dy]
    for word, xy in points.items():
        label = axis.annotate(word, xy, xytext=(0, 0), textcoords="offset points", fontsize=10)
        for dx, dy in places:
            label.set_position((dx, dy))
            label.set_horizontalalignment("left" if dx > 0 else "right" if dx < 0 else "center")
            label.set_verticalalignment("bottom" if dy > 0 else "top" if dy < 0 else "center")
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in taken):
                break
        if max(abs(dx), abs(dy)) > 3:
            axis.annotate("", xy, (dx, dy), textcoords="offset points", arrowprops=dict(arrowstyle="-", color="0.6"))
        taken.append(box)
    return taken[len(points):]


def word_list(text):
    return [word.strip() for word in text.split(",") if word.strip()]


def check(cfg):
    """Every mistake a user can fix, named in one sentence before any slow work."""
    least = {"window": 1, "min_count": 1, "max_vocab": 3, "dim": 2, "max_sentences": 0}
    for name, smallest in least.items():
        if getattr(cfg, name) < smallest:
            raise SystemExit(f"error: --{name} must be at least {smallest}, not {getattr(cfg, name)}")
    if cfg.alpha <= 0:
        raise SystemExit("error: --alpha must be positive (0.75 smooths the context distribution, 1 is plain PPMI)")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda needs a CUDA GPU and none is visible; use --device cpu")
    if Path(cfg.out_dir).is_file():
        raise SystemExit(f"error: --out_dir {cfg.out_dir} is a file; name a folder")
    if cfg.pretrained not in ("mirror", "auto", "none") and not Path(cfg.pretrained).is_file():
        raise SystemExit(f"error: --pretrained {cfg.pretrained}: no such file; name a vectors file or mirror/auto/none")
    for item in word_list(cfg.input) or ["(nothing)"]:
        if item in ("lyrics", "poems") and not corpus_files(item):
            raise SystemExit(f"error: data/{item}/cleansed.txt is missing; run `python prepare_data.py {item}` first")
        if not corpus_files(item):
            raise SystemExit(f"error: --input {item}: no such .txt file or folder (or shakespeare, lyrics, poems)")


def main(argv=None):
    if argv is None:  # in a notebook sys.argv holds the kernel's own arguments: run with the defaults
        argv = [] if "ipykernel" in sys.modules else sys.argv[1:]
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],  # python -OO drops docstrings
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    try:  # each field's comment in the Config source becomes its flag's help text
        comments = dict(re.findall(r"^\s+(\w+): \w+ = .*?  # (.*)$", inspect.getsource(Config), flags=re.MULTILINE))
    except (OSError, TypeError):  # no source at hand (some notebooks): flags without help text
        comments = {}
    for field in fields(Config):
        kind = dict(action=argparse.BooleanOptionalAction) if field.type in (bool, "bool") else \
            dict(type=type(field.default), choices=CHOICES.get(field.name))
        parser.add_argument(f"--{field.name}", default=field.default, help=comments.get(field.name), **kind)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # a typo such as --windw must not be silently ignored
        close = difflib.get_close_matches(unknown[0].split("=")[0], [f"--{f.name}" for f in fields(Config)], n=1)
        parser.error(f"unrecognized arguments: {' '.join(unknown)}" + (f"; did you mean {close[0]}?" if close else ""))
    return run(Config(**vars(args)))


# %% Run
if __name__ == "__main__":
    main()
