"""Tests for embeddings_pca.py: counting, weighting, PCA, the picture's labels, Spearman, analogies, the shared-pairs
comparison, the data files and the GloVe download (from a web server on this machine), bad input, and a smoke run."""

import functools
import gzip
import hashlib
import http.server
import itertools
import math
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

import embeddings_pca as ep
from conftest import ROOT

TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

# ----------------------------------------------------------------------------------------------------------------------
# Counting


def count_table(sentences, window, distance_weighting=False):
    words = sorted({w for s in sentences for w in s})
    word_to_id = {w: i for i, w in enumerate(words)}
    dense = ep.count_cooccurrences(sentences, word_to_id, window, distance_weighting).to_dense().numpy()
    return lambda a, b: dense[word_to_id[a], word_to_id[b]], dense


def test_cooccurrence_counts_match_hand_count():
    sentences = ep.tokenize("The cat sat on the mat. The dog sat.\n\nA cat!")
    assert sentences == [["the", "cat", "sat", "on", "the", "mat"], ["the", "dog", "sat"], ["a", "cat"]]
    count, dense = count_table(sentences, window=2)
    # Sentence 1, pairs within 2 positions: the-cat, the-sat, cat-sat, cat-on, sat-on, sat-the, on-the, on-mat,
    # the-mat; sentence 2: the-dog, the-sat, dog-sat; sentence 3: a-cat.
    assert count("the", "sat") == 3  # (the1, sat), (sat, the2) in sentence 1 and (the, sat) in sentence 2
    assert count("the", "cat") == 1 and count("cat", "sat") == 1 and count("on", "mat") == 1
    assert count("the", "mat") == 1 and count("the", "on") == 1 and count("a", "cat") == 1
    assert count("cat", "on") == 1 and count("sat", "on") == 1
    assert count("the", "the") == 0  # the1 and the2 are 4 apart: outside the window
    assert count("cat", "mat") == 0  # 4 apart
    assert count("mat", "the") == 1  # symmetric partner of (the, mat); never across the sentence boundary to "the"
    assert count("dog", "a") == 0 and count("sat", "a") == 0  # different sentences never pair
    assert np.array_equal(dense, dense.T)
    assert dense.sum() == 2 * 13  # 13 unordered pairs listed above, each counted in both directions
    count1, _ = count_table(sentences, window=1)
    assert count1("the", "sat") == 0 and count1("cat", "sat") == 1  # window 1: only neighbours


def test_distance_weighting_and_out_of_vocabulary_gaps():
    count, _ = count_table([["a", "b", "c"]], window=2, distance_weighting=True)
    assert count("a", "b") == 1.0 and count("a", "c") == 0.5 and count("c", "a") == 0.5
    # An unknown word keeps its position: "a" and "c" stay 2 apart, so window 1 does not pair them.
    sentences, word_to_id = [["a", "zzz", "c"]], {"a": 0, "c": 1}
    assert ep.count_cooccurrences(sentences, word_to_id, 1).to_dense().sum() == 0
    assert ep.count_cooccurrences(sentences, word_to_id, 2).to_dense()[0, 1] == 1


def test_vocabulary_min_count_max_vocab_and_coverage():
    sentences = [["a", "a", "a", "b", "b", "c"]]
    assert ep.build_vocabulary(sentences, 2, 10) == (["a", "b"], pytest.approx(5 / 6))
    assert ep.build_vocabulary(sentences, 1, 1) == (["a"], pytest.approx(3 / 6))


# ----------------------------------------------------------------------------------------------------------------------
# Weighting


@pytest.mark.parametrize("alpha", [1.0, 0.75])
def test_ppmi_matches_the_formula(alpha):
    counts = torch.tensor([[0.0, 4, 1, 0], [4, 2, 0, 3], [1, 0, 0, 5], [0, 3, 5, 1]], dtype=torch.float64)
    ppmi = ep.weight_matrix(counts.to_sparse(), "ppmi", alpha).to_dense()
    total = counts.sum()
    expected = torch.zeros_like(counts)
    context_power = counts.sum(0) ** alpha
    for w in range(4):
        for c in range(4):
            if counts[w, c] > 0:
                p_wc, p_w = counts[w, c] / total, counts[w].sum() / total
                p_c = context_power[c] / context_power.sum()
                expected[w, c] = max(math.log(p_wc / (p_w * p_c)), 0.0)
    assert torch.allclose(ppmi, expected)
    assert (ppmi >= 0).all() and (ppmi[counts == 0] == 0).all()


def test_log_and_rownorm_weighting():
    counts = torch.tensor([[0.0, 3], [1, 1]], dtype=torch.float64).to_sparse()
    assert torch.allclose(ep.weight_matrix(counts, "log").to_dense(), torch.log1p(counts.to_dense()))
    assert torch.allclose(ep.weight_matrix(counts, "rownorm").to_dense().sum(1), torch.ones(2, dtype=torch.float64))
    assert torch.equal(ep.weight_matrix(counts, "raw").to_dense(), counts.to_dense())


# ----------------------------------------------------------------------------------------------------------------------
# PCA


def test_exact_pca_matches_numpy_svd_up_to_sign():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(40, 12)) @ np.diag(np.linspace(3, 0.2, 12))
    result = ep.pca(torch.from_numpy(data), 5, "exact")
    components = result.components.numpy()
    assert np.allclose(components @ components.T, np.eye(5), atol=1e-10)  # orthonormal axes
    ratios = result.explained_variance_ratio.numpy()
    assert ((ratios >= 0) & (ratios <= 1)).all() and ratios.sum() <= 1 + 1e-12
    assert np.all(np.diff(ratios) <= 0)
    centred = data - data.mean(0)
    U, S, Vt = np.linalg.svd(centred, full_matrices=False)
    signs = np.sign((components * Vt[:5]).sum(1))
    assert np.allclose(components * signs[:, None], Vt[:5], atol=1e-10)
    assert np.allclose(result.scores.numpy() * signs, (U * S)[:, :5], atol=1e-10)
    assert np.allclose(ratios, S[:5] ** 2 / (S ** 2).sum())
    full = ep.pca(torch.from_numpy(data), 12, "exact").explained_variance_ratio
    assert float(full.sum()) == pytest.approx(1.0)  # all axes together explain everything


def test_randomized_pca_on_sparse_matrix_agrees_with_exact():
    rng = np.random.default_rng(1)
    # Rank 6 with many zeros (7 at most after centring): the sketch's 2 * 4 + 10 = 18 random directions capture the
    # whole range, so the answer must be exact.
    left = rng.random((300, 6)) * (rng.random((300, 6)) < 0.3)
    right = rng.random((6, 250)) * (rng.random((6, 250)) < 0.3)
    dense = torch.from_numpy(left @ right)
    exact = ep.pca(dense, 4, "exact")
    randomized = ep.pca(dense.to_sparse(), 4, "randomized", n_iter=6)
    assert torch.allclose(randomized.singular_values, exact.singular_values, rtol=1e-6)
    assert torch.allclose(randomized.explained_variance_ratio, exact.explained_variance_ratio, rtol=1e-6)
    overlap = (randomized.components * exact.components).sum(1).abs()  # |cos| between matching axes
    assert torch.allclose(overlap, torch.ones(4, dtype=overlap.dtype), atol=1e-6)
    assert torch.allclose(randomized.scores.abs(), exact.scores.abs(), atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# The picture


def test_crowded_labels_never_overlap_and_the_arrows_have_a_legend(tmp_path):
    """father, mother and queen at almost the same place (the old picture printed them on top of each other)."""
    words = ["king", "queen", "man", "woman", "father", "mother", "love", "heart", "night", "day"]
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(words), 8)).astype(np.float32)
    vectors[4] = vectors[1] + 1e-3  # father on queen
    vectors[5] = vectors[1] - 1e-3  # mother on queen
    vectors[7] = vectors[6] + 1e-3  # heart on love
    models = [ep.WordVectors("crowded", words, vectors), ep.WordVectors("fewer", words[:4], vectors[:4])]
    path = tmp_path / "words_2d.png"
    panels = ep.draw_words_2d(models, words + ["unknown"], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and [len(boxes) for boxes in panels] == [10, 4]
    for boxes in panels:
        for a, b in itertools.combinations(boxes, 2):
            assert not a.overlaps(b), (a, b)


def test_the_legend_names_both_arrows(tmp_path, monkeypatch):
    figures = []

    class RecordedFigure(ep.Figure):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            figures.append(self)

    monkeypatch.setattr(ep, "Figure", RecordedFigure)
    words = ["king", "queen", "man", "woman"]
    ep.draw_words_2d([ep.WordVectors("m", words, np.eye(4, dtype=np.float32))], words, tmp_path / "p.png")
    legend = figures[0].axes[0].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == ["man \u2192 woman", "king \u2192 queen"]
    assert "parallel" in legend.get_title().get_text()


# ----------------------------------------------------------------------------------------------------------------------
# Scores


def test_spearman_with_ties_matches_hand_computation():
    assert ep.average_ranks([10, 20, 20, 30]).tolist() == [1, 2.5, 2.5, 4]
    assert ep.average_ranks([3, 1, 3, 3]).tolist() == [3, 1, 3, 3]  # three-way tie over ranks 2, 3, 4
    # x ranks [1, 2.5, 2.5, 4], y ranks [1, 3, 2, 4]: covariance 4.5 / sqrt(4.5 * 5)
    assert ep.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    # Without ties Spearman equals the textbook 1 - 6 sum d^2 / (n (n^2 - 1)).
    x, y = [5, 1, 4, 2, 3], [4, 2, 5, 1, 3]
    d = ep.average_ranks(x) - ep.average_ranks(y)
    assert ep.spearman(x, y) == pytest.approx(1 - 6 * (d ** 2).sum() / (5 * 24))
    assert ep.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)
    assert math.isnan(ep.spearman([1, 1, 1], [1, 2, 3])) and math.isnan(ep.spearman([], []))


def planted_vectors():
    """Random words plus man/woman/king/queen built so that woman - man = queen - king exactly."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(50)] + ["man", "woman", "king", "queen"]
    vectors = rng.normal(size=(len(words), 16))
    gender = rng.normal(size=16) * 0.7
    vectors[51], vectors[53] = vectors[50] + gender, vectors[52] + gender
    return ep.WordVectors("planted", words, vectors.astype(np.float32))


def test_analogy_solver_finds_planted_analogy():
    wv = planted_vectors()
    questions = [("man", "woman", "king", "queen"), ("king", "queen", "man", "woman"),
                 ("man", "king", "woman", "queen")]
    assert ep.analogy_accuracy(wv, questions, wv.words) == 1.0
    # A question whose expected answer is not the planted one (queen) is counted wrong.
    assert ep.analogy_accuracy(wv, [("man", "woman", "king", "w0")], wv.words) == 0.0
    neighbours = [word for word, _ in ep.nearest_neighbours(wv, "man", 3)]
    assert "man" not in neighbours and "woman" in neighbours


def test_nearest_neighbours_are_words_not_punctuation():
    vectors = np.array([[1, 0], [0.99, 0.1], [0.9, 0.3], [0.5, 0.5], [-1, 0]], dtype=np.float32)
    wv = ep.WordVectors("GloVe-like", ["love", "``", "heart", "don't", "stone"], vectors)
    assert [word for word, _ in ep.nearest_neighbours(wv, "love", 3)] == ["heart", "don't", "stone"]


def test_an_analogy_never_answers_one_of_its_question_words():
    """b is almost a, so b - a + c is almost c: the answer is d only because c itself is not allowed."""
    words, vectors = ["a", "b", "c", "d"], np.array([[1, 0], [1, 0.05], [0, 1], [0.05, 1]], dtype=np.float32)
    assert ep.analogy_accuracy(ep.WordVectors("t", words, vectors), [("a", "b", "c", "d")], words) == 1.0


def test_3cosadd_follows_its_formula():
    """a:b :: c:? in 2-D: cos(d, b) - cos(d, a) + cos(d, c) is 1/sqrt(2) for d1 and 0 for d2, so 3CosAdd answers d1,
    although d1 is almost opposite c."""
    words = ["a", "b", "c", "d1", "d2"]
    vectors = np.array([[-1, 1], [1, -3], [-1, 3], [0, -1], [1, 1]], dtype=np.float32)
    wv = ep.WordVectors("hand-made", words, vectors)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cos_a, cos_b, cos_c = (unit[3:] @ unit[i] for i in range(3))  # for d1 and d2
    np.testing.assert_allclose(cos_b - cos_a + cos_c, [1 / math.sqrt(2), 0.0], atol=1e-6)
    assert ep.analogy_accuracy(wv, [("a", "b", "c", "d1")], words) == 1.0
    assert ep.analogy_accuracy(wv, [("a", "b", "c", "d2")], words) == 0.0


def test_compare_uses_exactly_the_pairs_every_model_covers():
    wv = planted_vectors()
    smaller = ep.WordVectors("smaller", wv.words[:52], wv.vectors[:52])
    pairs = [("man", "woman", 9.0), ("w1", "w2", 1.0), ("w3", "w4", 2.0), ("king", "queen", 9.0), ("w5", "w6", 3.0)]
    logged = []
    rows, columns = ep.compare([wv, smaller], {"toy": pairs}, [("man", "woman", "king", "queen")], logged.append)
    assert columns == ["toy rho (4/5)", "3CosAdd (0/1)"]  # king/queen are unknown to the smaller model
    common = [pair for pair in pairs if pair[0] != "king"]
    cosines = [float(wv.unit[wv.index[a]] @ wv.unit[wv.index[b]]) for a, b, _ in common]
    assert rows[0][columns[0]] == pytest.approx(ep.spearman(cosines, [score for *_, score in common]))
    assert "coverage toy: planted knows every word of 5/5, smaller knows every word of 4/5" in logged
    assert math.isnan(rows[0][columns[1]])
    assert [row["words"] for row in rows] == [54, 52]


# ----------------------------------------------------------------------------------------------------------------------
# Data files, downloads, vector files


def test_text_vectors_loader(tmp_path):
    path = tmp_path / "vectors.txt"
    path.write_bytes(b"2 3\nthe 1 0 0\n\x96 0 1 0\nKing 0 0 1\n")  # word2vec header, a raw non-UTF-8 byte, capitals
    wv = ep.load_text_vectors(path, "test")
    assert wv.words == ["the", "\ufffd", "king"] and wv.vectors.shape == (3, 3)
    with gzip.open(tmp_path / "vectors.txt.gz", "wb") as file:
        file.write(path.read_bytes())
    assert ep.load_text_vectors(tmp_path / "vectors.txt.gz", "test").words == wv.words
    for text in ("the 1 0 0\nking 0 1\n", "the 1 0 0\nking 0 one 1\n", "the x y\n"):
        path.write_text(text)
        with pytest.raises(SystemExit, match="vectors.txt, line [12]: expected a word and as many numbers"):
            ep.load_text_vectors(path, "test")


def test_shakespeare_is_read_from_the_shipped_file_without_network(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NANOVERSE_DATA", raising=False)
    text = ep.load_corpus("shakespeare")  # the network is blocked in tests: this must come from datasets/
    assert hashlib.sha256(text.encode()).hexdigest() == TINY_SHAKESPEARE_SHA256


def test_shakespeare_pasted_alone_uses_the_mirror_or_the_download_cache(tmp_path, data_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ep, "SHIPPED_SHAKESPEARE", tmp_path / "datasets" / "tinyshakespeare.txt.gz")  # not there
    assert hashlib.sha256(ep.load_corpus("shakespeare").encode()).hexdigest() == TINY_SHAKESPEARE_SHA256


def test_named_datasets_read_prepare_data_cleansed_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"data/lyrics/cleansed.txt is missing; run `python prepare_data.py lyrics`"):
        ep.main(["--input", "shakespeare,lyrics", "--out_dir", str(out)])
    (tmp_path / "data" / "poems").mkdir(parents=True)
    (tmp_path / "data" / "poems" / "cleansed.txt").write_text("The king spoke.\n\nThe queen answered.")
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("A man.")
    (folder / "sub" / "a.txt").write_text("A woman.")
    (folder / "notes.md").write_text("not read")
    assert ep.load_corpus(f"poems, {folder}") == "The king spoke.\n\nThe queen answered.\n\nA man.\n\nA woman."
    (folder / "bad.txt").write_bytes(b"caf\xe9")
    with pytest.raises(SystemExit, match="bad.txt is not UTF-8 text"):
        ep.load_corpus(str(folder))


class Server:
    """A web server on this machine that serves `body` at /file, announcing `length` bytes, and counts requests."""

    def __init__(self, body, length=None):
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/file"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def offline_cwd(tmp_path, monkeypatch):
    """A fresh folder as the current one, no data mirror, and no proxy for requests to this machine."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NANOVERSE_DATA", raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    return tmp_path


def test_pretrained_auto_downloads_once_checks_and_caches(offline_cwd, monkeypatch, capsys):
    glove = b"3 2\nthe 0.1 0.2\nking 0.3 0.4\nqueen 0.5 0.6\n"  # word2vec's text format, as gensim-data ships it
    body = gzip.compress(glove)
    server = Server(body)
    try:
        checksum = "md5:" + hashlib.md5(body).hexdigest()
        monkeypatch.setitem(ep.DOWNLOADS, ep.GLOVE["auto"], (server.url, len(body), checksum))
        wv = ep.load_pretrained("auto", print)
        assert wv.name == "GloVe 6B 50d" and wv.words == ["the", "king", "queen"] and wv.vectors.shape == (3, 2)
        cached = offline_cwd / "data" / ep.GLOVE["auto"]
        assert cached.read_bytes() == body and [p.name for p in cached.parent.iterdir()] == [cached.name]
        assert "downloading glove-wiki-gigaword-50.gz" in capsys.readouterr().err  # the progress bar
        assert ep.load_pretrained("auto", print).words == wv.words and server.requests == 1  # cached
    finally:
        server.close()


@pytest.mark.parametrize("damage", ["checksum", "short", "cut off", "long"])
def test_a_wrong_download_is_refused_and_leaves_nothing(offline_cwd, monkeypatch, damage):
    body = b"x" * 5000
    served = {"checksum": body[:-1] + b"y", "short": body[:4000], "cut off": body[:4000], "long": body + b"more"}
    server = Server(served[damage], length=5000 if damage == "cut off" else None)  # cut off: the connection closes
    try:
        checksum = "md5:" + hashlib.md5(body).hexdigest()
        monkeypatch.setitem(ep.DOWNLOADS, ep.GLOVE["auto"], (server.url, len(body), checksum))
        with pytest.raises(SystemExit, match="error: could not download .*not the expected file of 5,000 bytes"):
            ep.data_file(ep.GLOVE["auto"])
        assert not (offline_cwd / "data").exists()  # the bytes are checked before anything is written
    finally:
        server.close()


def test_offline_the_download_fails_in_one_sentence(offline_cwd, monkeypatch):
    with socket.socket() as probe:  # a port on this machine where nothing listens
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/glove.gz"
    monkeypatch.setitem(ep.DOWNLOADS, ep.GLOVE["auto"], (url, 10, "md5:" + "0" * 32))
    with pytest.raises(SystemExit) as stop:
        ep.main(["--pretrained", "auto", "--out_dir", str(offline_cwd / "out")])
    message = str(stop.value)
    assert message.startswith(f"error: could not download {url} (") and "connect to the internet" in message
    assert "\n" not in message and not (offline_cwd / "data" / "pretrained").exists()


def test_mirror_glove_missing_is_said_and_the_run_goes_on(offline_cwd, capsys):
    (offline_cwd / "text.txt").write_text("the king and the queen. the man and the woman.\n" * 20)
    rows = ep.main(["--input", "text.txt", "--min_count", "1", "--dim", "3", "--out_dir", "out"])
    printed = capsys.readouterr().out
    assert "no GloVe to compare with (no data mirror): pass --pretrained auto" in printed
    assert "no word-similarity sets" in printed
    assert [row["model"] for row in rows] == ["ours (ppmi, PCA)"]


# ----------------------------------------------------------------------------------------------------------------------
# Bad input and the command line


def test_bad_input_is_named(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("123 ... !!!\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.md").write_text("no text files here")
    with pytest.raises(SystemExit, match="only 0 words occur --min_count times"):
        ep.main(["--input", str(empty), "--out_dir", str(tmp_path)])
    for flags, named in ((["--window", "0"], "--window must be at least 1, not 0"),
                         (["--min_count", "0"], "--min_count must be at least 1, not 0"),
                         (["--dim", "1"], "--dim must be at least 2"),
                         (["--alpha", "0"], "--alpha must be positive"),
                         (["--out_dir", str(empty)], "is a file; name a folder"),
                         (["--pretrained", str(tmp_path / "missing.txt")], "--pretrained .*missing.txt: no such file"),
                         (["--input", str(tmp_path / "missing.txt")], "--input .*missing.txt: no such .txt file"),
                         (["--input", str(tmp_path / "out")], "no such .txt file or folder"),  # no .txt inside
                         (["--input", ""], r"--input \(nothing\)")):
        with pytest.raises(SystemExit, match=named):
            ep.main(["--input", str(empty), *flags])


def test_comparison_files_are_checked_before_the_corpus_is_read(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("the king and the queen. the man and the woman.\n" * 20)
    (tmp_path / "bad.txt").write_text("king 1 2\nqueen 1\n")
    with pytest.raises(SystemExit, match="bad.txt, line 2"):
        ep.main(["--input", str(text), "--out_dir", str(tmp_path / "out"), "--pretrained", str(tmp_path / "bad.txt")])
    assert "corpus:" not in capsys.readouterr().out  # it stopped before reading the corpus


def test_a_mistyped_flag_gets_a_suggestion_and_a_shortened_one_is_no_guess(capsys):
    with pytest.raises(SystemExit) as error:
        ep.main(["--windw", "3"])
    assert error.value.code == 2
    assert "unrecognized arguments: --windw 3; did you mean --window?" in capsys.readouterr().err
    with pytest.raises(SystemExit) as error:  # --windo would otherwise be read as --window
        ep.main(["--windo", "3", "--dim", "1"])
    assert error.value.code == 2 and "unrecognized arguments: --windo 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a removed flag is refused, not ignored
        ep.main(["--gpt_checkpoint", "ckpt.pt"])
    assert "unrecognized arguments: --gpt_checkpoint ckpt.pt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ep.main(["--weighting", "tfidf"])
    assert "invalid choice: 'tfidf'" in capsys.readouterr().err


def test_help_works_without_docstrings():
    """python -OO strips docstrings; the description of --help comes from the module docstring."""
    result = subprocess.run([sys.executable, "-OO", "embeddings_pca.py", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "--window" in result.stdout and "--distance_weighting" in result.stdout
    assert "how many words on each side" in result.stdout, result.stderr  # help text from the Config comments


# ----------------------------------------------------------------------------------------------------------------------
# Smoke run on real lyrics


def test_smoke_run_on_lyrics_writes_picture_table_and_vectors(tmp_path, data_dir, capsys):
    lyrics = data_dir / "poetry_lyrics"
    out_dir = tmp_path / "out"
    rows = ep.main(["--input", f"{lyrics / 'beatles.txt'},{lyrics / 'dickinson.txt'}", "--max_sentences", "2000",
                    "--min_count", "2", "--dim", "20", "--out_dir", str(out_dir),
                    "--plot_words", "king,queen,man,woman,love,night,xylophonequux"])
    printed = capsys.readouterr().out
    assert "corpus: 2,000 sentences" in printed  # --max_sentences
    assert "coverage WS353: ours (ppmi, PCA) knows every word of" in printed and "coverage analogies" in printed
    assert "nearest to 'love' in GloVe 6B 50d excerpt:" in printed
    assert [row["model"] for row in rows] == ["ours (ppmi, PCA)", "GloVe 6B 50d excerpt"]
    assert (out_dir / "words_2d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out_dir / "results.md").read_text()
    assert table.startswith("| model | dim | words | WS353 rho (") and table.count("\n") == 4
    vectors = ep.load_text_vectors(out_dir / "vectors.txt", "again")  # our vectors in GloVe's text format
    assert vectors.vectors.shape[1] == 20 and "love" in vectors.index
    assert sorted(p.name for p in out_dir.iterdir()) == ["results.md", "vectors.txt", "words_2d.png"]  # no leftovers
