"""Word vectors by counting: a co-occurrence matrix, reweighted (PPMI), reduced by PCA, drawn, and measured.

Every word is described by the words around it (Firth 1957: "you shall know a word by the company it keeps"). We count
how often each pair of words appears within a few positions of each other, turn the counts into a weighted matrix
(raw, log, row-normalised, or positive pointwise mutual information), and keep its top principal components. Then we
look (a 2-D picture with the man->woman and king->queen offsets drawn as arrows) and measure (Spearman correlation with
human similarity judgements, analogy accuracy), next to pretrained GloVe vectors and, if given, a gpt.py model's
learned token embeddings, always on exactly the same word pairs.

References: Levy, Goldberg & Dagan 2015, "Improving Distributional Similarity with Lessons Learned from Word
Embeddings" (PPMI, context-distribution smoothing, eigenvalue weighting); Levy & Goldberg 2014, "Linguistic
Regularities in Sparse and Explicit Word Representations" (3CosAdd, 3CosMul); Halko, Martinsson & Tropp 2011,
"Finding Structure with Randomness" (randomized SVD); Pennington, Socher & Manning 2014 (GloVe).

Run:
    python embeddings_pca.py                                    # CPU: Tiny Shakespeare, a few seconds
    python embeddings_pca.py --input shakespeare,lyrics,poems --device cuda   # GPU: the SVD runs there
    Colab: paste this file into a cell and run it, or call main(["--max_sentences", "10000"]) in the next cell.
Pictures (words_2d.png), the results table and our vectors (GloVe's text format) go to out/embeddings_pca/.
"""

import argparse
import hashlib
import inspect
import json
import math
import os
import re
import sys
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch


@dataclass
class Config:
    # corpus and vocabulary
    input: str = "shakespeare"  # comma-separated .txt files, folders, .json poems, or shakespeare / lyrics / poems
    max_sentences: int = 0  # use only the first N sentences, 0 = all (the classic exercise uses 5,000-10,000)
    min_count: int = 5  # words seen fewer times than this are left out of the vocabulary
    max_vocab: int = 20000  # keep at most this many of the most frequent words
    # co-occurrence matrix and weighting
    # A wide window with near words weighted more measured best on word relatedness (WS353 0.43 vs 0.28 with window
    # 4, 1/d off), on the 1.9 M-word shakespeare,lyrics,poems corpus, not the default input (benchmarks/RESULTS.md).
    window: int = 16  # how many words on each side of a word count as its context
    distance_weighting: bool = True  # count a pair d words apart as 1/d instead of 1 (GloVe does this)
    weighting: str = "ppmi"  # raw | log | rownorm | ppmi: how counts become the matrix that PCA reduces
    alpha: float = 0.75  # PPMI context-distribution smoothing exponent (1 = plain PPMI)
    # reduction
    dim: int = 100  # principal components kept for evaluation (pictures use the first 2)
    eigenvalue_power: float = 0.5  # vectors are U * S**p: 1 = PCA coordinates; 0.5 or 0 does better on similarity tasks
    svd: str = "auto"  # exact | randomized | auto (exact when words or columns <= 1,000: a full SVD costs O(n^3))
    svd_iters: int = 6  # power iterations of the randomized SVD (more = closer to exact)
    # pictures and evaluation
    plot_words: str = "king,queen,man,woman,father,mother,love,heart,night,day,war,peace"  # words drawn in 2-D
    neighbours_of: str = "king,love,night,heart"  # words whose nearest neighbours are printed
    top_k: int = 8  # how many nearest neighbours to print
    eval_dir: str = ""  # folder with wordsim353/, SimLex-999/, MEN/, analogy/ ('' = the data mirror or a download)
    pretrained: str = "auto"  # GloVe text-format vectors to compare with ('auto' = the mirror's excerpt, '' = none)
    gpt_checkpoint: str = ""  # a gpt.py checkpoint whose token embeddings (wte) join the comparison
    # output and system
    out_dir: str = "out/embeddings_pca"  # pictures, results table and vectors are written here
    save_vectors: bool = True  # write our vectors as vectors.txt in GloVe's text format
    device: str = "auto"  # where the SVD runs: auto | cpu | cuda (mps lacks the sparse float64 algebra used here)
    seed: int = 1337  # seeds the randomized SVD


# ----------------------------------------------------------------------------------------------------------------------
# Data: the corpus and the evaluation sets come from $NANOVERSE_DATA, from data/, or are downloaded (pinned, checked).

GITHUB = "https://raw.githubusercontent.com"
SIMCROSS = f"{GITHUB}/mrmechko/simcross/ffc5c7598185be00260d81fd71274db32e6bceda"
DATA_FILES = {  # path under the data folder -> (download URL or None, sha256)
    "tinyshakespeare/input.txt": (
        f"{GITHUB}/karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
    "poems/poetryfoundation_poems_by_author.json": (
        f"{GITHUB}/Fingolfin7/Poetry-Foundation-Scraper/5a24e297a7aa08aa2b069af3f88a416f4ee49495/poems.json",
        "d8b947193afd44bb3d67aa27a68649d2556bb616abc9f0fc11d30d8ed63819da"),
    "poetry_lyrics": (None, None),  # 43 files of song lyrics: local copies only
    "word_similarity/wordsim353/combined.csv": (
        f"{SIMCROSS}/wordsim353/combined.csv", "49ff6433ae68abe716fb66433fd870483e289a7a8c74531f59eca847d103fff3"),
    "word_similarity/SimLex-999/SimLex-999.txt": (
        f"{SIMCROSS}/SimLex-999/SimLex-999.txt", "ca00ff8515a36cde32d13c2b83def23f5a167b67db93ebfcfb7dae039ba22c0b"),
    "word_similarity/MEN/MEN_dataset_natural_form_full": (None, None),  # local copies only
    "word_similarity/analogy/questions-words.txt": (
        f"{GITHUB}/tmikolov/word2vec/20c129af10659f7c50e86e3be406df663beff438/questions-words.txt",
        "8c29b3332afc46f3fb8be04cb5297bf96f39aa7131272dff57869b4485b22a36"),
    "embeddings/glove.6B.50d.first2446.txt": (None, None),
}
NAMED_CORPORA = {"shakespeare": "tinyshakespeare/input.txt", "lyrics": "poetry_lyrics",
                 "poems": "poems/poetryfoundation_poems_by_author.json"}


def atomic_write(path, data):
    """Write bytes or text to a temporary file, then rename it: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    os.replace(temporary, path)


def download(url, path, sha256):
    import urllib.request

    from tqdm import tqdm

    chunks = []
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            with tqdm(total=int(response.headers.get("Content-Length") or 0) or None, unit="B", unit_scale=True,
                      desc=f"downloading {path.name}") as bar:
                while chunk := response.read(1 << 16):
                    chunks.append(chunk)
                    bar.update(len(chunk))
    except OSError as error:
        raise SystemExit(f"Could not download {url} ({error}): put a copy at {path} or set NANOVERSE_DATA to a "
                         f"folder that holds it.")
    data = b"".join(chunks)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise SystemExit(f"The download of {url} does not match its checksum: delete {path} and try again later.")
    atomic_write(path, data)


def find_data(relative, required=True):
    """Look for a data file in $NANOVERSE_DATA, then data/, then download it into data/ when we know where from."""
    url, sha256 = DATA_FILES[relative]
    mirror = os.environ.get("NANOVERSE_DATA")
    if mirror and (Path(mirror) / relative).exists():
        return Path(mirror) / relative
    cached = Path("data") / relative
    # A downloaded copy is checked on every use: one cut short or edited by hand is fetched again below.
    if cached.exists() and not (url and cached.is_file() and hashlib.sha256(cached.read_bytes()).hexdigest() != sha256):
        return cached
    if url is None:
        if required:
            raise SystemExit(f"{relative} was not found: set NANOVERSE_DATA to the data folder that holds it, "
                             f"or pass your own files with --input.")
        return None
    download(url, Path("data") / relative, sha256)
    return Path("data") / relative


def read_text(path):
    """Text files arrive as UTF-8 or as Windows-1252 (lyrics scraped from old web pages): try UTF-8 first."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        print(f"note: {path} is not UTF-8; reading it as Windows-1252", file=sys.stderr)
        text = data.decode("cp1252", errors="replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def poem_texts(node):
    """The texts inside JSON: {author: {title: poem}}, or records such as {"poem": ...} or {"text": ...}."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict) and any(isinstance(node.get(key), str) for key in ("poem", "text")):
        yield node["poem"] if isinstance(node.get("poem"), str) else node["text"]
    elif isinstance(node, (dict, list)):
        for value in (node.values() if isinstance(node, dict) else node):
            yield from poem_texts(value)


def load_corpus(spec):
    """Concatenate every source named in spec (comma-separated); documents are separated by blank lines."""
    documents = []
    for item in [part.strip() for part in spec.split(",") if part.strip()]:
        path = find_data(NAMED_CORPORA[item]) if item in NAMED_CORPORA else Path(item)
        if not path.exists():
            raise SystemExit(f"--input {item}: no such file or folder; give a .txt, a folder of .txt files, a .json "
                             f"of poems, or one of the names {', '.join(NAMED_CORPORA)}.")
        suffixes = (".txt", ".json", ".jsonl")
        files = sorted(p for p in path.rglob("*") if p.suffix in suffixes) if path.is_dir() else [path]
        for file in files:
            if file.suffix in (".json", ".jsonl"):  # JSON Lines (prepare_data.py's cleansed.jsonl): one record a line
                text = read_text(file)
                try:
                    records = [json.loads(line) for line in text.splitlines() if line.strip()] \
                        if file.suffix == ".jsonl" else [json.loads(text)]
                    documents.extend(document for record in records for document in poem_texts(record))
                except json.JSONDecodeError as error:
                    raise SystemExit(f"{file} is not valid JSON ({error}); fix it or pass plain text instead.")
            else:
                documents.append(read_text(file))
    return "\n\n".join(documents)


# A sentence ends at . ! ? or a blank line (a stanza or a speech); single line breaks inside verse do not end one.
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")
# A word is a run of letters, with inner apostrophes kept (can't, o'er, know't); digits and punctuation are dropped.
WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")


def tokenize(text, max_sentences=0):
    """Lower-cased word tokens, one list per sentence."""
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    sentences = (WORD.findall(sentence) for sentence in SENTENCE_END.split(text))
    sentences = [words for words in sentences if words]
    return sentences[:max_sentences] if max_sentences > 0 else sentences


def build_vocabulary(sentences, min_count, max_vocab):
    """The most frequent words (ties broken alphabetically, so runs are reproducible), and the share of tokens kept."""
    counts = Counter(word for words in sentences for word in words)
    kept = sorted((item for item in counts.items() if item[1] >= min_count), key=lambda item: (-item[1], item[0]))
    words = [word for word, _ in kept[:max_vocab]]
    total = sum(counts.values())
    coverage = sum(counts[word] for word in words) / total if total else 0.0
    return words, coverage


def encode(sentences, word_to_id):
    """One flat array of word ids (-1 for words outside the vocabulary) and, beside it, each token's sentence number.

    Out-of-vocabulary words keep their place, so "distance" always means distance in the original text.
    """
    token_ids = np.fromiter((word_to_id.get(w, -1) for words in sentences for w in words), dtype=np.int64)
    sentence_ids = np.repeat(np.arange(len(sentences)), [len(words) for words in sentences])
    return token_ids, sentence_ids


# ----------------------------------------------------------------------------------------------------------------------
# The co-occurrence matrix, its weighting, and PCA.

def count_cooccurrences(token_ids, sentence_ids, vocab_size, window, distance_weighting=False):
    """X[w, c] = sum over positions i, j in the same sentence with 0 < |i - j| <= window, w_i = w, w_j = c, of
    weight(|i - j|), where weight(d) = 1 (or 1/d with distance_weighting). X is symmetric by construction.

    No loop over tokens: for each offset d we pair the whole array with itself shifted by d, keep the pairs that stay
    inside one sentence and the vocabulary, and let a sparse tensor add up repeated (w, c) pairs (coalesce). Summing
    offset by offset keeps memory near the size of the matrix rather than of all pairs at once.
    """
    shape = (vocab_size, vocab_size)
    no_pairs = torch.zeros(2, 0, dtype=torch.int64)
    one_way = torch.sparse_coo_tensor(no_pairs, torch.zeros(0, dtype=torch.float64), shape, check_invariants=True)
    for d in range(1, window + 1):
        left, right = token_ids[:-d], token_ids[d:]
        keep = (sentence_ids[:-d] == sentence_ids[d:]) & (left >= 0) & (right >= 0)
        pairs = torch.from_numpy(np.stack([left[keep], right[keep]]))  # (2, n_pairs): word, context d to its right
        weights = torch.full((pairs.shape[1],), 1.0 / d if distance_weighting else 1.0, dtype=torch.float64)
        one_way = (one_way + torch.sparse_coo_tensor(pairs, weights, shape, check_invariants=True)).coalesce()
    return (one_way + one_way.t()).coalesce()  # each pair was seen left-to-right; add right-to-left to make X symmetric


def weight_matrix(counts, weighting, alpha=0.75):
    """Reweight a sparse count matrix. Every scheme maps a zero count to zero, so the result stays sparse.

    raw: X.  log: log(1 + X), which tames the huge counts of "the" and "and".  rownorm: X / rowsum = P(c | w).
    ppmi: PMI(w, c) = log P(w, c) / (P(w) P_alpha(c)), kept where positive (Church & Hanks 1990; Bullinaria & Levy
    2007). P_alpha(c) = count(c)^alpha / sum_c' count(c')^alpha raises rare contexts' probability a little, so they no
    longer get inflated PMI: context-distribution smoothing (Levy, Goldberg & Dagan 2015; alpha = 0.75 as in
    word2vec's negative sampling). Unseen pairs would have PMI = -inf; PPMI sets them, and all negatives, to 0.
    """
    (rows, cols), values = counts.indices(), counts.values()
    if weighting == "raw":
        new_values = values
    elif weighting == "log":
        new_values = torch.log1p(values)
    elif weighting in ("rownorm", "ppmi"):
        row_sums = torch.zeros(counts.shape[0], dtype=values.dtype).index_add_(0, rows, values)
        if weighting == "rownorm":
            new_values = values / row_sums[rows]
        else:
            col_sums = torch.zeros(counts.shape[1], dtype=values.dtype).index_add_(0, cols, values)
            total = values.sum()
            smoothed_context = col_sums ** alpha / (col_sums ** alpha).sum()
            pmi = torch.log(values / total) - torch.log(row_sums[rows] / total) - torch.log(smoothed_context[cols])
            new_values = pmi.clamp(min=0)
    else:
        raise ValueError(f"unknown weighting {weighting!r}")
    return torch.sparse_coo_tensor(counts.indices(), new_values, counts.shape, check_invariants=True).coalesce()


@dataclass
class PCAResult:
    scores: torch.Tensor  # (n, k) U * S: each word's coordinates along the principal axes
    singular_values: torch.Tensor  # (k,)
    components: torch.Tensor  # (k, m) the principal axes, orthonormal rows (Vt)
    explained_variance_ratio: torch.Tensor  # (k,) share of the total variance along each axis


def pca(matrix, k, method="auto", n_iter=6, seed=0):
    """PCA of the rows of matrix (dense or sparse): centre each column, then SVD, X - mean = U S Vt.

    The principal axes are the rows of Vt, the word coordinates are U S, and axis i explains s_i^2 / ||X - mean||_F^2
    of the variance. 'exact' takes the full SVD of the centred dense matrix. 'randomized' never forms it (a sparse
    20,000 x 20,000 matrix would become 3 GB dense): it multiplies by the centred matrix implicitly,
    (X - 1 mean) Q = X Q - 1 (mean Q), inside Halko, Martinsson & Tropp's randomized subspace iteration (2011,
    algorithms 4.4 and 5.1): find an orthonormal Q whose span holds the top-k range of X - mean, then take the small
    SVD of Q^T (X - mean).
    """
    n_rows, n_cols = matrix.shape
    k = min(k, n_rows, n_cols)
    if method == "auto":
        method = "exact" if min(n_rows, n_cols) <= 1000 else "randomized"
    is_sparse = matrix.layout != torch.strided
    mean = (torch.sparse.sum(matrix, dim=0).to_dense() if is_sparse else matrix.sum(0)) / n_rows  # (m,)
    squares = (matrix.values() ** 2).sum() if is_sparse else (matrix ** 2).sum()
    total_variance = squares - n_rows * (mean ** 2).sum()  # ||X - 1 mean||_F^2 without forming X - 1 mean
    if method == "exact":
        dense = matrix.to_dense() if is_sparse else matrix
        U, S, Vt = torch.linalg.svd(dense - mean, full_matrices=False)
        U, S, Vt = U[:, :k], S[:k], Vt[:k]
    elif method == "randomized":
        with warnings.catch_warnings():  # torch calls its sparse CSR support "beta"; we only multiply with it
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            transposed = matrix.t().coalesce().to_sparse_csr() if is_sparse else matrix.t()
            matrix = matrix.to_sparse_csr() if is_sparse else matrix  # CSR: fast sparse @ dense products
        times = lambda Q: matrix @ Q - mean[None, :] @ Q  # noqa: E731  (X - 1 mean) Q, the mean row broadcast
        times_transposed = lambda Q: transposed @ Q - mean[:, None] * Q.sum(0)  # noqa: E731  (X - 1 mean)^T Q
        generator = torch.Generator(device="cpu").manual_seed(seed)
        # Oversample: sketch 2k + 10 directions for k axes. PPMI's spectrum decays slowly, and with only k + 10 the
        # 100th singular value came out 8% low and word similarity suffered (benchmarks/bench_embeddings_pca.py).
        sketch = torch.randn(n_cols, 2 * k + 10, generator=generator, dtype=mean.dtype).to(mean.device)
        Q = torch.linalg.qr(times(sketch)).Q
        for _ in range(n_iter):  # each round sharpens the gap between wanted and unwanted singular values
            Q = torch.linalg.qr(times(torch.linalg.qr(times_transposed(Q)).Q)).Q
        U_small, S, Vt = torch.linalg.svd(times_transposed(Q).t(), full_matrices=False)  # Q^T (X - mean), small
        U, S, Vt = (Q @ U_small)[:, :k], S[:k], Vt[:k]
    else:
        raise ValueError(f"unknown SVD method {method!r}")
    # SVD signs are arbitrary; make each axis's largest coordinate positive so that runs and pictures are repeatable.
    signs = torch.sign(U.gather(0, U.abs().argmax(0, keepdim=True)))[0]
    signs[signs == 0] = 1
    U, Vt = U * signs, Vt * signs[:, None]
    return PCAResult(U * S, S, Vt, S ** 2 / total_variance)


# ----------------------------------------------------------------------------------------------------------------------
# Word vectors from elsewhere: GloVe text files and the token embeddings of a gpt.py checkpoint.

@dataclass
class WordVectors:
    name: str  # shown in tables and pictures
    words: list  # row i of vectors belongs to words[i]
    vectors: np.ndarray  # (n_words, dim) float32

    def __post_init__(self):
        self.index = {word: i for i, word in enumerate(self.words)}


def load_text_vectors(path, name="GloVe"):
    """GloVe's text format, one 'word x1 x2 ... xd' per line (a word2vec 'count dim' first line is skipped).

    Read as UTF-8 with replacement: GloVe 6B holds a few raw non-UTF-8 bytes as words. Words are lower-cased; when
    two lines give the same word, the first (more frequent) one wins.
    """
    words, rows, dim = [], [], None
    seen = set()
    with open(path, encoding="utf-8", errors="replace") as file:
        for line_number, line in enumerate(file, 1):
            parts = line.rstrip("\n").rstrip().split(" ")
            if line_number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue
            if not line.strip():
                continue
            try:
                vector = np.array(parts[1:], dtype=np.float32)
            except ValueError:
                vector = None
            if vector is None or len(vector) == 0 or (dim is not None and len(vector) != dim):
                raise SystemExit(f"{path}, line {line_number}: expected a word and {dim or 'its'} numbers, found "
                                 f"{line[:60]!r}; pass a vectors file in GloVe's text format.")
            dim = len(vector)
            word = parts[0].lower()
            if word not in seen:
                seen.add(word)
                words.append(word)
                rows.append(vector)
    if not rows:
        raise SystemExit(f"{path} holds no vectors; pass a vectors file in GloVe's text format.")
    return WordVectors(name, words, np.stack(rows))


def gpt2_encoding():
    """tiktoken's GPT-2 tokenizer: from the mirror's encoder.json / vocab.bpe when present, else tiktoken's cache."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    folder = Path(os.environ.get("NANOVERSE_DATA", "data")) / "gpt2"
    if (folder / "vocab.bpe").exists() and (folder / "encoder.json").exists():
        ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(folder / "vocab.bpe"),
                                                encoder_json_file=str(folder / "encoder.json"))
        pattern = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
        return tiktoken.Encoding(name="gpt2", pat_str=pattern, mergeable_ranks=ranks,
                                 special_tokens={"<|endoftext|>": 50256})
    return tiktoken.get_encoding("gpt2")


def open_gpt_checkpoint(path):
    """A gpt.py (or finetune_gpt2.py) model's token embedding (wte), the encode function of its tokenizer, and which
    script wrote it."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"--gpt_checkpoint {path}: no such file; pass a checkpoint that gpt.py wrote.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, not a torch file, or holding arbitrary objects
        raise SystemExit(f"--gpt_checkpoint {path} cannot be read safely ({type(error).__name__}); pass a checkpoint "
                         f"that gpt.py wrote.")
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else {}
    wte = {key.replace("_orig_mod.", "").replace("module.", ""): value for key, value in state.items()
           if isinstance(value, torch.Tensor)}
    wte = wte.get("transformer.wte.weight", wte.get("wte.weight"))
    if wte is None:
        raise SystemExit(f"--gpt_checkpoint {path} has no transformer.wte.weight; pass a checkpoint that gpt.py wrote.")
    meta = checkpoint.get("meta") or {}
    finetuned = checkpoint.get("format") == "nanoverse-finetune-gpt2-v1"
    if finetuned:  # finetune_gpt2.py: always GPT-2's tokenizer
        meta = {"tokenizer": "gpt2"}
    if not meta:  # older checkpoints point at their data folder instead
        config = checkpoint.get("config") or {}
        for folder in (config.get("data_dir"), path.parent):
            if folder and (Path(folder) / "meta.json").exists():
                meta = json.loads((Path(folder) / "meta.json").read_text())
                meta.setdefault("data_dir", str(folder))
                break
    tokenizer = meta.get("tokenizer")
    if tokenizer == "gpt2":
        encode_text = gpt2_encoding().encode_ordinary
    elif tokenizer == "bpe":
        import bpe

        folder = meta.get("data_dir") or checkpoint.get("data_dir") or path.parent  # gpt.py stores its data folder
        model_file = Path(folder) / meta.get("bpe_model", "bpe.model")
        if not model_file.exists():
            raise SystemExit(f"{model_file} (the checkpoint's BPE tokenizer) was not found; put it beside the "
                             f"checkpoint or run prepare_data.py again.")
        encode_text = bpe.Tokenizer.load(str(model_file)).encode_ordinary
    elif tokenizer == "char":
        raise SystemExit(f"--gpt_checkpoint {path} is character-level: its embeddings belong to characters, not "
                         f"words; train gpt.py on data prepared with --tokenizer gpt2 or bpe.")
    else:
        raise SystemExit(f"--gpt_checkpoint {path} does not say which tokenizer it used (no meta with 'tokenizer'); "
                         f"put the data folder's meta.json beside it.")
    return wte, encode_text, "finetune_gpt2.py" if finetuned else "gpt.py"


def gpt_vectors(path, wte, encode_text, script, candidate_words):
    """The rows of the embedding for the words that are a single token.

    A word in running text is " word" (GPT-2-style tokenizers keep the leading space), so that is what we encode.
    Words split into several tokens have no row of their own and are left out (they show up as lower coverage).
    """
    words, rows = [], []
    for word in candidate_words:
        ids = encode_text(" " + word)
        if len(ids) == 1 and ids[0] < wte.shape[0]:
            words.append(word)
            rows.append(ids[0])
    if not words:
        raise SystemExit(f"--gpt_checkpoint {path}: none of our words is a single token of its tokenizer.")
    return WordVectors(f"{script} wte ({Path(path).name})", words, wte[rows].float().numpy())


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation: nearest neighbours, Spearman correlation with human judgements, analogies.

def unit_rows(vectors):
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def nearest_neighbours(wv, word, k):
    """The k most similar words by cosine; only words as our tokenizer sees them (GloVe also holds punctuation)."""
    unit = unit_rows(wv.vectors)
    similarity = unit @ unit[wv.index[word]]
    similarity[wv.index[word]] = -np.inf
    words = (i for i in np.argsort(-similarity, kind="stable") if WORD.fullmatch(wv.words[i]))
    best = [i for i, _ in zip(words, range(k))]  # the first k, without testing the whole vocabulary
    return [(wv.words[i], float(similarity[i])) for i in best]


def average_ranks(values):
    """Ranks 1..n; tied values share the average of the ranks they span ([10, 20, 20, 30] -> [1, 2.5, 2.5, 4])."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts_group = np.r_[True, sorted_values[1:] != sorted_values[:-1]]
    group = np.cumsum(starts_group) - 1
    first = np.flatnonzero(starts_group)  # 0-based position where each group of ties begins
    last = np.r_[first[1:], len(values)] - 1
    ranks = np.empty(len(values))
    ranks[order] = ((first + last) / 2 + 1)[group]
    return ranks


def spearman(x, y):
    """Spearman's rho: Pearson's correlation of the ranks (correct with ties, unlike 1 - 6 sum d^2 / n(n^2 - 1))."""
    rank_x, rank_y = average_ranks(x), average_ranks(y)
    rank_x, rank_y = rank_x - rank_x.mean(), rank_y - rank_y.mean()
    denominator = math.sqrt((rank_x ** 2).sum() * (rank_y ** 2).sum())
    return float((rank_x * rank_y).sum() / denominator) if denominator > 0 else float("nan")


SIMILARITY_SETS = {  # name -> (path under word_similarity/, separator, has a header line, column of the score)
    "WS353": ("wordsim353/combined.csv", ",", True, 2),
    "SimLex": ("SimLex-999/SimLex-999.txt", "\t", True, 3),
    "MEN": ("MEN/MEN_dataset_natural_form_full", " ", False, 2),
}


def load_similarity_pairs(path, separator, has_header, score_column):
    pairs = []
    for line_number, line in enumerate(read_text(path).splitlines(), 1):
        if (has_header and line_number == 1) or not line.strip():
            continue
        parts = line.strip().split(separator)
        try:
            pairs.append((parts[0].lower(), parts[1].lower(), float(parts[score_column])))
        except (IndexError, ValueError):
            raise SystemExit(f"{path}, line {line_number}: expected 'word1{separator}word2{separator}score', found "
                             f"{line[:60]!r}.")
    return pairs


def load_analogies(path):
    """Google's questions-words.txt: 'a b c d' means a is to b as c is to d; ': section' lines are headings."""
    return [tuple(line.lower().split()) for line in read_text(path).splitlines()
            if line.strip() and not line.startswith(":") and len(line.split()) == 4]


def similarity_rho(wv, pairs):
    unit = unit_rows(wv.vectors)
    model_scores = [float(unit[wv.index[a]] @ unit[wv.index[b]]) for a, b, _ in pairs]
    return spearman(model_scores, [score for _, _, score in pairs])


def analogy_accuracy(wv, questions, candidates, batch_size=256):
    """Share of a:b :: c:d answered d, searching only among `candidates` and never answering a, b or c.

    3CosAdd: argmax_d cos(d, b) - cos(d, a) + cos(d, c), i.e. the word nearest to b - a + c (Mikolov et al. 2013).
    3CosMul: argmax_d cos'(d, b) cos'(d, c) / (cos'(d, a) + 0.001) with cos' = (cos + 1) / 2 in [0, 1], which stops
    one large similarity from dominating the sum (Levy & Goldberg 2014).
    """
    if not questions:
        return float("nan"), float("nan")
    position = {word: i for i, word in enumerate(candidates)}
    unit = unit_rows(wv.vectors[[wv.index[word] for word in candidates]])
    ids = np.array([[position[word] for word in question] for question in questions])
    correct_add = correct_mul = 0
    for start in range(0, len(ids), batch_size):
        batch = ids[start:start + batch_size]  # (B, 4)
        cos_a, cos_b, cos_c = (unit[batch[:, i]] @ unit.T for i in range(3))  # each (B, n_candidates)
        add = cos_b - cos_a + cos_c
        mul = ((cos_b + 1) / 2) * ((cos_c + 1) / 2) / ((cos_a + 1) / 2 + 1e-3)
        for scores in (add, mul):
            np.put_along_axis(scores, batch[:, :3], -np.inf, axis=1)
        correct_add += int((add.argmax(1) == batch[:, 3]).sum())
        correct_mul += int((mul.argmax(1) == batch[:, 3]).sum())
    return correct_add / len(ids), correct_mul / len(ids)


def compare(models, similarity_sets, analogies, log=print):
    """Evaluate every model on exactly the same items: the pairs and questions whose words all models know.

    Analogy answers are searched among the words all models know, so every model answers the same multiple choice.
    """
    shared = set.intersection(*(set(wv.words) for wv in models))
    candidates = sorted(shared)
    rows = [{"model": wv.name, "dim": wv.vectors.shape[1], "words": len(wv.words)} for wv in models]
    columns = []
    for name, pairs in similarity_sets.items():
        for wv in models:
            covered = sum(a in wv.index and b in wv.index for a, b, _ in pairs)
            log(f"coverage {name}: {wv.name} knows both words of {covered}/{len(pairs)} pairs")
        common = [pair for pair in pairs if pair[0] in shared and pair[1] in shared]
        column = f"{name} rho ({len(common)}/{len(pairs)})"
        columns.append(column)
        for row, wv in zip(rows, models):
            row[column] = similarity_rho(wv, common) if len(common) >= 3 else float("nan")
    if analogies is not None:
        for wv in models:
            covered = sum(all(word in wv.index for word in question) for question in analogies)
            log(f"coverage analogies: {wv.name} knows all four words of {covered}/{len(analogies)} questions")
        common = [question for question in analogies if all(word in shared for word in question)]
        add_column, mul_column = f"3CosAdd ({len(common)}/{len(analogies)})", "3CosMul"
        columns += [add_column, mul_column]
        for row, wv in zip(rows, models):
            row[add_column], row[mul_column] = analogy_accuracy(wv, common, candidates)
    return rows, columns


def format_table(rows, columns):
    header = ["model", "dim", "words"] + columns
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for row in rows:
        cells = [str(row["model"]), str(row["dim"]), str(row["words"])]
        cells += [f"{row[column]:.3f}" for column in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_words_2d(panels, words, path):
    """One scatter per model of the requested words' first two principal coordinates, with the man->woman and
    king->queen offsets drawn as arrows: if the vectors encode gender consistently, the two arrows are parallel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5.5), squeeze=False)
    for axis, (title, points) in zip(axes[0], panels):  # points: {word: (x, y)} for the words the model knows
        for word, (x, y) in points.items():
            axis.scatter(x, y, color="tab:blue")
            axis.annotate(word, (x, y), textcoords="offset points", xytext=(4, 4))
        for start, end, colour in (("man", "woman", "tab:red"), ("king", "queen", "tab:green")):
            if start in points and end in points:
                axis.annotate("", xy=points[end], xytext=points[start],
                              arrowprops=dict(arrowstyle="->", color=colour, lw=1.5))
        missing = [word for word in words if word not in points]
        axis.set_title(title + (f"\n(not in vocabulary: {', '.join(missing)})" if missing else ""), fontsize=10)
        axis.set_xlabel("principal component 1")
        axis.set_ylabel("principal component 2")
    figure.tight_layout()
    temporary = Path(path).with_name(Path(path).stem + ".tmp.png")
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    os.replace(temporary, path)


# ----------------------------------------------------------------------------------------------------------------------

def pick_device(name):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.split(":")[0] not in ("cpu", "cuda") or (name.startswith("cuda") and not torch.cuda.is_available()):
        raise SystemExit(f"--device {name} is not available here: use auto, cpu or cuda (with a CUDA GPU).")
    return name


def word_vectors_from_pca(name, words, result, dim, power):
    """U * S**power: power 1 gives the PCA coordinates, 0 treats every kept axis as equally important."""
    U = result.scores / result.singular_values.clamp(min=1e-12)
    vectors = (U * result.singular_values ** power)[:, :dim]
    return WordVectors(name, words, vectors.float().cpu().numpy())


def run(cfg, log=print):
    """Build, reduce, draw and evaluate; returns the table rows."""
    if cfg.window < 1:
        raise SystemExit("--window must be at least 1 (the number of words on each side that count as context).")
    smallest = {"dim": 2, "min_count": 1, "max_vocab": 3, "top_k": 1, "svd_iters": 0, "max_sentences": 0}
    for flag, least in smallest.items():
        if getattr(cfg, flag) < least:
            raise SystemExit(f"--{flag} must be at least {least}, not {getattr(cfg, flag)}.")
    if cfg.weighting not in ("raw", "log", "rownorm", "ppmi") or cfg.svd not in ("auto", "exact", "randomized"):
        raise SystemExit("--weighting must be raw, log, rownorm or ppmi, and --svd auto, exact or randomized.")
    if cfg.alpha <= 0:
        raise SystemExit("--alpha must be positive (0.75 smooths the context distribution, 1 is plain PPMI).")
    device = pick_device(cfg.device)
    out_dir = Path(cfg.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SystemExit(f"--out_dir {out_dir} is a file; name a folder for the picture and the tables.")
    if cfg.eval_dir and not Path(cfg.eval_dir).is_dir():
        raise SystemExit(f"--eval_dir {cfg.eval_dir} is not a folder; pass the folder that holds the word-similarity "
                         f"sets (wordsim353/, SimLex-999/, MEN/, analogy/), or leave it out.")
    # The comparison files are checked before the slow part, so a wrong path costs seconds, not minutes.
    pretrained = cfg.pretrained
    if pretrained == "auto":
        found = find_data("embeddings/glove.6B.50d.first2446.txt", required=False)
        pretrained = str(found) if found else ""
    if pretrained and not Path(pretrained).is_file():
        raise SystemExit(f"--pretrained {pretrained}: no such file; pass GloVe text vectors or '' for none.")
    glove = load_text_vectors(pretrained, f"GloVe ({Path(pretrained).name})") if pretrained else None
    gpt_embedding = open_gpt_checkpoint(cfg.gpt_checkpoint) if cfg.gpt_checkpoint else None
    started = time.perf_counter()
    sentences = tokenize(load_corpus(cfg.input), cfg.max_sentences)
    n_tokens = sum(len(words) for words in sentences)
    words, coverage = build_vocabulary(sentences, cfg.min_count, cfg.max_vocab)
    if len(words) < 3:
        raise SystemExit(f"--input {cfg.input} gives only {n_tokens} words and a vocabulary of {len(words)}: pass a "
                         f"larger corpus or lower --min_count.")
    log(f"corpus: {len(sentences):,} sentences, {n_tokens:,} words; vocabulary {len(words):,} words covering "
        f"{coverage:.1%} of tokens")
    word_to_id = {word: i for i, word in enumerate(words)}
    counts = count_cooccurrences(*encode(sentences, word_to_id), len(words), cfg.window, cfg.distance_weighting)
    log(f"co-occurrence matrix: {len(words):,} x {len(words):,}, {counts.values().numel():,} non-zero "
        f"({counts.values().numel() / len(words) ** 2:.2%}); corpus read and matrix built in "
        f"{time.perf_counter() - started:.1f} s")

    matrix = weight_matrix(counts, cfg.weighting, cfg.alpha).to(device)
    result = pca(matrix, cfg.dim, cfg.svd, cfg.svd_iters, cfg.seed)
    ratios = result.explained_variance_ratio.cpu()
    log(f"PCA ({cfg.weighting}): explained variance of the first axes "
        f"{', '.join(f'{r:.3f}' for r in ratios[:5].tolist())}; first 2 {ratios[:2].sum():.3f}, "
        f"first {len(ratios)} {ratios.sum():.3f}")
    ours = word_vectors_from_pca(f"ours ({cfg.weighting}, PCA)", words, result, cfg.dim, cfg.eigenvalue_power)

    eval_dir = Path(cfg.eval_dir) if cfg.eval_dir else None
    def eval_file(relative):  # noqa: E306
        if eval_dir is not None:
            return eval_dir / relative if (eval_dir / relative).exists() else None
        return find_data(f"word_similarity/{relative}", required=False)
    similarity_sets = {name: load_similarity_pairs(path, *layout)
                       for name, (relative, *layout) in SIMILARITY_SETS.items()
                       if (path := eval_file(relative)) is not None}
    analogy_path = eval_file("analogy/questions-words.txt")
    analogies = load_analogies(analogy_path) if analogy_path is not None else None

    models, panels = [ours], []
    if glove is not None:
        models.append(glove)
    if gpt_embedding is not None:  # only words we know can be compared anyway
        models.append(gpt_vectors(cfg.gpt_checkpoint, *gpt_embedding, words))

    plot_words = [word.strip().lower() for word in cfg.plot_words.split(",") if word.strip()]
    for wv in models:
        coordinates = (result.scores[:, :2] if wv is ours else pca(torch.from_numpy(wv.vectors).double(), 2).scores)
        coordinates = coordinates.cpu().numpy()
        missing = [word for word in plot_words if word not in wv.index]
        if missing:
            log(f"{wv.name}: not in vocabulary, left out of the picture: {', '.join(missing)}")
        panels.append((wv.name, {w: tuple(coordinates[wv.index[w]]) for w in plot_words if w in wv.index}))
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_words_2d(panels, plot_words, out_dir / "words_2d.png")
    log(f"picture: {out_dir / 'words_2d.png'}")

    for word in [w.strip().lower() for w in cfg.neighbours_of.split(",") if w.strip()]:
        for wv in models:
            if word in wv.index:
                neighbours = ", ".join(f"{w} {s:.2f}" for w, s in nearest_neighbours(wv, word, cfg.top_k))
                log(f"nearest to {word!r} in {wv.name}: {neighbours}")
            else:
                log(f"nearest to {word!r} in {wv.name}: not in vocabulary")

    rows, columns = compare(models, similarity_sets, analogies, log)
    table = format_table(rows, columns)
    log(table)
    atomic_write(out_dir / "results.md", table + "\n")
    atomic_write(out_dir / "results.json", json.dumps({"config": asdict(cfg), "rows": rows}, indent=1))
    if cfg.save_vectors:
        lines = (" ".join([word] + [f"{x:.5f}" for x in vector]) for word, vector in zip(ours.words, ours.vectors))
        atomic_write(out_dir / "vectors.txt", "\n".join(lines) + "\n")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],  # python -OO drops docstrings
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     allow_abbrev=False)  # a shortened flag is an error, never a guess
    try:  # each field's comment in the Config source becomes its flag's help text
        source = inspect.getsource(Config)
    except (OSError, TypeError):  # source not available (some notebooks): flags without help text
        source = ""
    comments = dict(re.findall(r"^\s+(\w+): \w+ = .*?  # (.*)$", source, flags=re.MULTILINE))
    for field in fields(Config):
        help_text = comments.get(field.name, "")
        if field.type is bool or field.type == "bool":
            parser.add_argument(f"--{field.name}", action=argparse.BooleanOptionalAction, default=field.default,
                                help=help_text)
        else:
            parser.add_argument(f"--{field.name}", type=type(field.default), default=field.default, help=help_text)
    # parse_known_args: in a notebook sys.argv holds the kernel's "-f kernel.json", which must not stop the run.
    args, unknown = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    unknown = [arg for i, arg in enumerate(unknown) if arg != "-f" and not (i and unknown[i - 1] == "-f")]
    if unknown:  # a typo such as --windw must not be silently ignored
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return run(Config(**vars(args)))


# %% Run
if __name__ == "__main__":
    main()
