"""Tests for embeddings_pca.py: counting, PPMI, PCA, Spearman, analogies, loaders, and a smoke run on real lyrics."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import embeddings_pca as ep
from conftest import ROOT

# ----------------------------------------------------------------------------------------------------------------------
# Counting


def count_table(sentences, window, distance_weighting=False):
    words = sorted({w for s in sentences for w in s})
    word_to_id = {w: i for i, w in enumerate(words)}
    counts = ep.count_cooccurrences(*ep.encode(sentences, word_to_id), len(words), window, distance_weighting)
    dense = counts.to_dense().numpy()
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
    sentences = [["a", "b", "c"]]
    count, _ = count_table(sentences, window=2, distance_weighting=True)
    assert count("a", "b") == 1.0 and count("a", "c") == 0.5 and count("c", "a") == 0.5
    # An unknown word keeps its position: "a" and "c" stay 2 apart, so window 1 does not pair them.
    token_ids, sentence_ids = ep.encode([["a", "zzz", "c"]], {"a": 0, "c": 1})
    assert token_ids.tolist() == [0, -1, 1]
    assert ep.count_cooccurrences(token_ids, sentence_ids, 2, 1).to_dense().sum() == 0
    assert ep.count_cooccurrences(token_ids, sentence_ids, 2, 2).to_dense()[0, 1] == 1


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
    low_rank = left @ right
    dense = torch.from_numpy(low_rank)
    exact = ep.pca(dense, 4, "exact")
    randomized = ep.pca(dense.to_sparse(), 4, "randomized", n_iter=6)
    assert torch.allclose(randomized.singular_values, exact.singular_values, rtol=1e-6)
    assert torch.allclose(randomized.explained_variance_ratio, exact.explained_variance_ratio, rtol=1e-6)
    overlap = (randomized.components * exact.components).sum(1).abs()  # |cos| between matching axes
    assert torch.allclose(overlap, torch.ones(4, dtype=overlap.dtype), atol=1e-6)
    assert torch.allclose(randomized.scores.abs(), exact.scores.abs(), atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation


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
    assert ep.analogy_accuracy(wv, questions, wv.words) == (1.0, 1.0)
    # A question whose expected answer is not the planted one (queen) is counted wrong by both methods.
    assert ep.analogy_accuracy(wv, [("man", "woman", "king", "w0")], wv.words) == (0.0, 0.0)
    neighbours = [word for word, _ in ep.nearest_neighbours(wv, "man", 3)]
    assert "man" not in neighbours and "woman" in neighbours


def test_nearest_neighbours_are_words_not_punctuation():
    vectors = np.array([[1, 0], [0.99, 0.1], [0.9, 0.3], [0.5, 0.5], [-1, 0]], dtype=np.float32)
    wv = ep.WordVectors("GloVe-like", ["love", "``", "heart", "don't", "stone"], vectors)
    assert [word for word, _ in ep.nearest_neighbours(wv, "love", 3)] == ["heart", "don't", "stone"]


def test_an_analogy_never_answers_one_of_its_question_words():
    """b is almost a, so b - a + c is almost c: the answer is d only because c itself is not allowed."""
    words, vectors = ["a", "b", "c", "d"], np.array([[1, 0], [1, 0.05], [0, 1], [0.05, 1]], dtype=np.float32)
    assert ep.analogy_accuracy(ep.WordVectors("t", words, vectors), [("a", "b", "c", "d")], words) == (1.0, 1.0)


def test_3cosadd_and_3cosmul_follow_their_formulas():
    """a:b :: c:? in 2-D. d1 is close to b and far from a, but almost opposite c: the sum 3CosAdd forgives that, the
    product 3CosMul does not (its factor (cos(d1, c) + 1) / 2 is 0.03), so the two methods answer differently."""
    words = ["a", "b", "c", "d1", "d2"]
    vectors = np.array([[-1, 1], [1, -3], [-1, 3], [0, -1], [1, 1]], dtype=np.float32)
    wv = ep.WordVectors("hand-made", words, vectors)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cos_a, cos_b, cos_c = (unit[3:] @ unit[i] for i in range(3))  # for d1 and d2
    add = cos_b - cos_a + cos_c
    mul = ((cos_b + 1) / 2) * ((cos_c + 1) / 2) / ((cos_a + 1) / 2 + 0.001)
    np.testing.assert_allclose(add, [1 / math.sqrt(2), 0.0], atol=1e-6)
    # by hand: d1 (1 + 3/sqrt(10)) (1 - 3/sqrt(10)) / 4 = 0.025 over (1 - 1/sqrt(2)) / 2 + 0.001; d2 0.2 / (0.5 + 0.001)
    np.testing.assert_allclose(mul, [0.025 / ((1 - 1 / math.sqrt(2)) / 2 + 0.001), 0.2 / 0.501], rtol=1e-5)
    assert ep.analogy_accuracy(wv, [("a", "b", "c", "d1")], words) == (1.0, 0.0)  # 3CosAdd picks d1
    assert ep.analogy_accuracy(wv, [("a", "b", "c", "d2")], words) == (0.0, 1.0)  # 3CosMul picks d2


def test_compare_uses_exactly_the_pairs_every_model_covers():
    wv = planted_vectors()
    smaller = ep.WordVectors("smaller", wv.words[:52], wv.vectors[:52])
    pairs = [("man", "woman", 9.0), ("w1", "w2", 1.0), ("w3", "w4", 2.0), ("king", "queen", 9.0), ("w5", "w6", 3.0)]
    logged = []
    rows, columns = ep.compare([wv, smaller], {"toy": pairs}, [("man", "woman", "king", "queen")], logged.append)
    assert columns[0] == "toy rho (4/5)"  # king/queen are unknown to the smaller model
    assert rows[0][columns[0]] == pytest.approx(ep.similarity_rho(wv, [p for p in pairs if p[0] != "king"]))
    assert "coverage toy: smaller knows both words of 4/5 pairs" in logged
    assert columns[1] == "3CosAdd (0/1)" and math.isnan(rows[0][columns[1]])


# ----------------------------------------------------------------------------------------------------------------------
# Loaders and bad input


def test_text_vectors_loader(tmp_path):
    path = tmp_path / "vectors.txt"
    path.write_bytes(b"2 3\nthe 1 0 0\n\x96 0 1 0\nKing 0 0 1\n")  # word2vec header, a raw non-UTF-8 byte, capitals
    wv = ep.load_text_vectors(path)
    assert wv.words == ["the", "\ufffd", "king"] and wv.vectors.shape == (3, 3)
    path.write_text("the 1 0 0\nking 0 1\n")
    with pytest.raises(SystemExit, match="line 2"):
        ep.load_text_vectors(path)


def test_bad_input_is_named(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("123 ... !!!\n")
    with pytest.raises(SystemExit, match="vocabulary of 0"):
        ep.main(["--input", str(empty), "--out_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="--window must be at least 1"):
        ep.main(["--input", str(empty), "--window", "0"])
    with pytest.raises(SystemExit, match="no such file"):
        ep.main(["--input", str(tmp_path / "missing.txt")])
    with pytest.raises(SystemExit):  # a typo is an error, not silently ignored
        ep.main(["--windw", "3"])
    for flags, named in ((["--top_k", "-1"], "--top_k must be at least 1, not -1"),
                         (["--min_count", "0"], "--min_count must be at least 1, not 0"),
                         (["--svd_iters", "-3"], "--svd_iters must be at least 0"),
                         (["--out_dir", str(empty)], "is a file; name a folder"),
                         (["--eval_dir", str(tmp_path / "nothere")], "--eval_dir .*nothere is not a folder")):
        with pytest.raises(SystemExit, match=named):
            ep.main(["--input", str(empty), *flags])


def test_a_finetune_gpt2_checkpoint_uses_gpt2_tokens(tmp_path, gpt2_encoding):
    wte = torch.randn(50257, 8)
    torch.save({"format": "nanoverse-finetune-gpt2-v1", "model": {"transformer.wte.weight": wte}},
               tmp_path / "ckpt.pt")
    wv = ep.gpt_vectors(tmp_path / "ckpt.pt", *ep.open_gpt_checkpoint(tmp_path / "ckpt.pt"), ["king"])
    (king_id,) = gpt2_encoding.encode_ordinary(" king")
    assert wv.words == ["king"] and np.array_equal(wv.vectors[0], wte[king_id].numpy())
    assert wv.name == "finetune_gpt2.py wte (ckpt.pt)"


def test_a_shortened_flag_is_an_error_not_a_guess(capsys):
    """--windo would otherwise be read as --window; here it must stop the run before anything is read."""
    with pytest.raises(SystemExit) as error:
        ep.main(["--windo", "3", "--dim", "1"])
    assert error.value.code == 2 and "unrecognized arguments: --windo 3" in capsys.readouterr().err


def test_help_works_without_docstrings():
    """python -OO strips docstrings; the description of --help comes from the module docstring."""
    result = subprocess.run([sys.executable, "-OO", "embeddings_pca.py", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "--window" in result.stdout, result.stderr


def fake_gpt_checkpoint(path, tokenizer, encoding=None):
    wte = torch.randn(50257 if encoding else 65, 8)
    meta = {"tokenizer": tokenizer, "vocab_size": wte.shape[0]}
    torch.save({"model": {"transformer.wte.weight": wte, "lm_head.weight": wte}, "meta": meta, "step": 1}, path)
    return wte


def test_gpt_checkpoint_rows_are_the_words_single_tokens(tmp_path, gpt2_encoding):
    path = tmp_path / "ckpt.pt"
    wte = fake_gpt_checkpoint(path, "gpt2", gpt2_encoding)
    wv = ep.gpt_vectors(path, *ep.open_gpt_checkpoint(path), ["king", "queen", "zyzzyvaxq"])
    assert wv.words == ["king", "queen"]  # the made-up word splits into several tokens and is left out
    (king_id,) = gpt2_encoding.encode_ordinary(" king")
    assert np.array_equal(wv.vectors[0], wte[king_id].numpy())
    fake_gpt_checkpoint(path, "char")
    with pytest.raises(SystemExit, match="character-level"):
        ep.open_gpt_checkpoint(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="cannot be read"):
        ep.open_gpt_checkpoint(path)


def test_comparison_files_are_checked_before_the_corpus_is_read(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("the king and the queen. the man and the woman.\n" * 20)
    fake_gpt_checkpoint(tmp_path / "char.pt", "char")
    for flags, named in ((["--pretrained", str(tmp_path / "missing.txt")], "--pretrained .*no such file"),
                         (["--gpt_checkpoint", str(tmp_path / "char.pt")], "character-level")):
        with pytest.raises(SystemExit, match=named):
            ep.main(["--input", str(text), "--out_dir", str(tmp_path / "out"), *flags])
        assert "corpus:" not in capsys.readouterr().out  # it stopped before reading the corpus


# ----------------------------------------------------------------------------------------------------------------------
# Smoke run on real lyrics


def test_smoke_run_on_lyrics_writes_pictures_table_and_vectors(tmp_path, data_dir, gpt2_encoding, capsys):
    lyrics = data_dir / "poetry_lyrics"
    checkpoint = tmp_path / "gpt.pt"
    fake_gpt_checkpoint(checkpoint, "gpt2", gpt2_encoding)
    out_dir = tmp_path / "out"
    rows = ep.main(["--input", f"{lyrics / 'beatles.txt'},{lyrics / 'dickinson.txt'}", "--max_sentences", "3000",
                    "--min_count", "2", "--dim", "20", "--out_dir", str(out_dir), "--gpt_checkpoint", str(checkpoint),
                    "--plot_words", "king,queen,man,woman,love,night,xylophonequux", "-f", "kernel.json"])
    printed = capsys.readouterr().out
    assert "not in vocabulary, left out of the picture: xylophonequux" in printed
    assert "coverage WS353" in printed and "coverage analogies" in printed
    assert [row["model"].split(" ")[0] for row in rows] == ["ours", "GloVe", "gpt.py"]
    assert (out_dir / "words_2d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out_dir / "results.md").read_text()
    assert table.startswith("| model | dim | words | WS353 rho") and table.count("\n") == 5
    assert json.loads((out_dir / "results.json").read_text())["config"]["dim"] == 20
    vectors = ep.load_text_vectors(out_dir / "vectors.txt")
    assert vectors.vectors.shape[1] == 20 and "love" in vectors.index


def test_a_damaged_cached_download_is_fetched_again(tmp_path, data_dir, monkeypatch):
    relative = "word_similarity/wordsim353/combined.csv"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NANOVERSE_DATA", raising=False)
    fetched = []
    monkeypatch.setattr(ep, "download", lambda url, path, sha256: fetched.append(path))
    cached = tmp_path / "data" / relative
    cached.parent.mkdir(parents=True)
    cached.write_bytes((data_dir / relative).read_bytes())  # the real file: used as it is
    assert ep.find_data(relative) == Path("data") / relative and fetched == []
    cached.write_bytes((data_dir / relative).read_bytes()[:100])  # cut short: downloaded again
    assert ep.find_data(relative) == Path("data") / relative and fetched == [Path("data") / relative]
