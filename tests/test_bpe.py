"""bpe.py: the textbook example, round trips, exact equality with tiktoken's GPT-2, both trainers agreeing, files."""

import json
import os
import random

import numpy as np
import pytest

import bpe
from bpe import Tokenizer
from conftest import DATA_MIRROR

TRICKY_TEXTS = [
    "",
    " ",
    "   \n\n\t  \r\n ",
    "I'll say you've he's THEY'RE don't 'tis o'clock rock'n'roll ''s 's'll 'LL",
    "3.14159 2024 1,000,000 0x1F 12345678901234567890 ١٢٣ ４５６",
    "👋🏽 family: 👨‍👩‍👧 ❤️ 🇫🇷",
    "机器学习很有趣。東京は晴れ。한국어 텍스트",
    "नमस्ते दुनिया, यह एक परीक्षण है।",
    "Hello世界مرحبا Привет ελληνικά שלום",
    "a" + " " * 1000 + "b",
    "trailing spaces   ",
    "   leading spaces",
    "tabs\t\tand\nnewlines\n\n\n",
    "e\u0301 combining, zero\u200bwidth, nbsp\u00a0here",
    "<|endoftext|> mentioned as text",
    "!!!???...,,,;;;:::---___***",
]


@pytest.fixture(scope="module")
def shakespeare():
    if DATA_MIRROR is None:
        pytest.skip("no local data mirror: set NANOVERSE_DATA to the shared data directory")
    return (DATA_MIRROR / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def gpt2():
    """Built once for the module: GPT-2's tokenizer from the mirror's encoder.json and vocab.bpe."""
    if DATA_MIRROR is None:
        pytest.skip("GPT-2 tokenizer files not found in the local data mirror")
    return Tokenizer.from_gpt2_files(DATA_MIRROR / "gpt2" / "encoder.json", DATA_MIRROR / "gpt2" / "vocab.bpe")


@pytest.fixture(scope="module")
def small_tokenizer(shakespeare):
    return Tokenizer.train(shakespeare[:50_000], vocab_size=400, special_tokens=("<|endoftext|>", "<pad>"))


# ----------------------------------------------------------------------------------------------------------------------
# The algorithm


def test_textbook_example():
    """Wikipedia's example: aa -> Z, ab -> Y (ties go to the smaller pair), ZY -> X turns aaabdaaabac into XdXac."""
    tokenizer = Tokenizer.train("aaabdaaabac", vocab_size=259, pattern="none", special_tokens=())
    assert tokenizer.merges == {(97, 97): 256, (97, 98): 257, (256, 257): 258}
    assert tokenizer.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert tokenizer.decode([258, 100, 258, 97, 99]) == "aaabdaaabac"
    assert tokenizer.vocab[258] == b"aaab"


def test_merge_is_left_to_right_and_non_overlapping():
    assert bpe.merge([1, 1, 1, 2, 1, 1], (1, 1), 9) == [9, 1, 2, 9]
    assert bpe.merge([1], (1, 1), 9) == [1]


def test_tie_break_prefers_the_smaller_pair():
    # "ab" and "cd" both occur twice; (97, 98) < (99, 100), so "ab" is merged first by both trainers.
    for trainer in ("fast", "reference"):
        tokenizer = Tokenizer.train("cdab cdab", 258, pattern="none", special_tokens=(), trainer=trainer)
        assert list(tokenizer.merges) == [(97, 98), (99, 100)]


@pytest.mark.parametrize(
    "corpus, vocab_size, pattern",
    [
        ("shakespeare", 420, "gpt2"),
        ("shakespeare", 300, "gpt4"),
        ("lyrics", 380, "gpt2"),
        ("hindi", 330, "gpt2"),
        ("shakespeare", 320, "none"),
        ("repetitive", 300, "gpt2"),
    ],
)
def test_fast_trainer_equals_reference_trainer(data_dir, corpus, vocab_size, pattern):
    if corpus == "shakespeare":
        text = (data_dir / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:12_000 if pattern == "none"
                                                                                     else 25_000]
    elif corpus == "lyrics":
        text = (data_dir / "poetry_lyrics" / "eminem.txt").read_text(encoding="utf-8")[:25_000]
    elif corpus == "hindi":
        text = (data_dir / "dakshina" / "hi" / "hi.translit.sampled.dev.tsv").read_text(encoding="utf-8")[:8_000]
    else:  # long runs of one byte and many equal counts stress the tie-break and overlapping pairs
        text = "aaaa aaaaa abab ababab " * 50 + "zzzzzzzzzzzz " * 7
    fast = Tokenizer.train(text, vocab_size, pattern=pattern, trainer="fast")
    reference = Tokenizer.train(text, vocab_size, pattern=pattern, trainer="reference")
    assert list(fast.merges.items()) == list(reference.merges.items())
    assert len(fast.merges) > 0


def test_training_stops_when_nothing_is_left_to_merge():
    tokenizer = Tokenizer.train("ab ab ab", vocab_size=1000, special_tokens=("<|endoftext|>",))
    assert [tokenizer.vocab[i] for i in tokenizer.merges.values()] == [b"ab", b" ab"]
    assert tokenizer.special_tokens == {"<|endoftext|>": 258} and tokenizer.vocab_size == 259


def test_special_tokens_get_the_last_ids_and_merges_do_not_cross_them(shakespeare):
    text = "<bos>hello world<eos>" * 40 + shakespeare[:5_000]
    tokenizer = Tokenizer.train(text, vocab_size=300, special_tokens=("<bos>", "<eos>", "<pad>"))
    assert tokenizer.special_tokens == {"<bos>": 297, "<eos>": 298, "<pad>": 299}
    assert all(b"<bos>" not in tokenizer.vocab[i] and b"<eos>" not in tokenizer.vocab[i] for i in range(297))
    assert tokenizer.encode("<pad>hi<eos>", allowed_special="all")[0] == 299


def test_more_merges_compress_better(shakespeare):
    text = shakespeare[:30_000]
    counts = [len(Tokenizer.train(text, size).encode(text)) for size in (257, 300, 400, 600)]
    assert counts[0] == len(text.encode("utf-8"))
    assert counts == sorted(counts, reverse=True) and counts[-1] < 0.6 * counts[0]


def test_gpt4_pattern_is_tiktokens_cl100k_pattern(monkeypatch):
    openai_public = pytest.importorskip("tiktoken_ext.openai_public")
    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", lambda *args, **kwargs: {})  # the pattern only, offline
    assert bpe.GPT4_PATTERN == openai_public.cl100k_base()["pat_str"]
    # Whitespace at the very end of a text is one chunk, even across a newline.
    assert Tokenizer({}, bpe.GPT4_PATTERN, {})._split("x\n\t") == ["x", "\n\t"]


def test_gpt4_pattern_keeps_digits_in_groups_of_three():
    tokenizer = Tokenizer.train("1234567 " * 20, vocab_size=270, pattern="gpt4", special_tokens=())
    assert all(len(tokenizer.vocab[i].strip()) <= 3 for i in tokenizer.merges.values())


# ----------------------------------------------------------------------------------------------------------------------
# Encode / decode


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_round_trip_trained(small_tokenizer, text):
    ids = small_tokenizer.encode(text, allowed_special="none")
    assert small_tokenizer.decode(ids) == text


def test_round_trip_long_text_and_cache_limit(small_tokenizer, shakespeare, monkeypatch):
    text = shakespeare[200_000:260_000]
    expected = small_tokenizer.encode_ordinary(text)
    assert small_tokenizer.decode(expected) == text
    monkeypatch.setattr(bpe, "CACHE_LIMIT", 50)  # the cache is emptied again and again: same ids
    small_tokenizer._cache.clear()
    assert small_tokenizer.encode_ordinary(text) == expected


def test_decode_replaces_invalid_utf8_as_tiktoken_does(gpt2, gpt2_encoding):
    ids = gpt2.encode("👋 café")
    for end in range(1, len(ids) + 1):
        assert gpt2.decode(ids[:end]) == gpt2_encoding.decode(ids[:end])
    assert "\ufffd" in gpt2.decode(ids[:1])


@pytest.mark.parametrize("word", ["aaaaaaa", "abababab", "aabaabaab", " the thethe", "xyz"])
def test_fast_encoder_equals_the_textbook_merge_loop(word):
    """_encode_chunk edits the ids in place; explain() runs the plain loop (merge every occurrence of the best pair)."""
    tokenizer = Tokenizer.train("aaaa abab aab aabaab the thethe " * 30, 290, pattern="none", special_tokens=())
    assert len(tokenizer.merges) > 20  # the whole text ends up as a handful of tokens
    assert tokenizer.explain(word)[-1] == f"ids: {tokenizer.encode(word)}"


def test_a_long_chunk_is_encoded_like_the_textbook_loop(shakespeare):
    """pattern="none" makes a text one chunk: the in-place loop still applies exactly the textbook merges."""
    tokenizer = Tokenizer.train(shakespeare[:20_000], 320, pattern="none", special_tokens=())
    text = shakespeare[30_000:32_000]
    assert tokenizer.explain(text)[-1] == f"ids: {tokenizer.encode(text)}" and tokenizer.decode(tokenizer.encode(text)) \
        == text


def test_explain_shows_the_merges_of_one_word(gpt2):
    steps = gpt2.explain(" Shakespeare")
    assert steps[0].startswith("bytes: [ ] [S]")
    assert steps[-1] == f"ids: {gpt2.encode(' Shakespeare')}"
    assert len(steps) >= 4


# ----------------------------------------------------------------------------------------------------------------------
# GPT-2, exactly


def _corpora(data_dir):
    yield "shakespeare", (data_dir / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    lyrics = sorted((data_dir / "poetry_lyrics").glob("*.txt"))
    yield "lyrics", "".join(path.read_text(encoding="utf-8", errors="replace") for path in lyrics[::2])
    poems = json.loads((data_dir / "poems" / "poetryfoundation_poems_by_author.json").read_text(encoding="utf-8"))
    yield "poems", "\n\n".join(poem for titles in poems.values() for poem in titles.values() if poem)[:2_000_000]


def test_gpt2_matches_tiktoken_on_the_corpora(gpt2, gpt2_encoding, data_dir):
    for name, text in _corpora(data_dir):
        ours = gpt2.encode_ordinary(text)
        assert ours == gpt2_encoding.encode_ordinary(text), name
        assert gpt2.decode(ours) == text


@pytest.mark.parametrize("text", TRICKY_TEXTS + ["lone \ud800 surrogate", "\r\n\r\n", "'''s''ll'", " 's ' s"])
def test_gpt2_matches_tiktoken_on_tricky_text(gpt2, gpt2_encoding, text):
    assert gpt2.encode_ordinary(text) == gpt2_encoding.encode_ordinary(text)
    assert gpt2.encode(text, allowed_special="none") == gpt2_encoding.encode(text, disallowed_special=())


def test_gpt2_special_tokens_as_tiktoken(gpt2, gpt2_encoding):
    text = "Hello<|endoftext|> world <|endoftext|><|endoftext|>!"
    assert gpt2.vocab_size == 50257 and gpt2.special_tokens == {"<|endoftext|>": 50256}
    assert gpt2.encode(text, allowed_special="all") == gpt2_encoding.encode(text, allowed_special="all")
    assert gpt2.encode(text, allowed_special={"<|endoftext|>"}) == gpt2_encoding.encode(
        text, allowed_special={"<|endoftext|>"})
    assert gpt2.encode(text, allowed_special="none") == gpt2_encoding.encode(text, disallowed_special=())
    assert 50256 not in gpt2.encode_ordinary(text)
    with pytest.raises(ValueError):
        gpt2_encoding.encode(text)
    with pytest.raises(ValueError, match="special token"):
        gpt2.encode(text)
    assert gpt2.decode(gpt2.encode(text, allowed_special="all")) == text


def test_disallowed_special_raises_for_a_trained_tokenizer(small_tokenizer):
    text = "a<pad>b<|endoftext|>"
    with pytest.raises(ValueError, match="<\\|endoftext\\|>"):
        small_tokenizer.encode(text, allowed_special={"<pad>"})
    ids = small_tokenizer.encode(text, allowed_special="all")
    assert small_tokenizer.special_tokens["<pad>"] in ids and small_tokenizer.decode(ids) == text
    with pytest.raises(ValueError, match="not special tokens"):
        small_tokenizer.encode("x", allowed_special={"<bos>"})


def test_from_tiktoken_recovers_the_gpt2_merges(gpt2, gpt2_encoding):
    recovered = Tokenizer.from_tiktoken(gpt2_encoding)
    assert list(recovered.merges.items()) == list(gpt2.merges.items())
    assert recovered.byte_ids == gpt2.byte_ids and recovered.special_tokens == gpt2.special_tokens
    text = TRICKY_TEXTS[3] + TRICKY_TEXTS[5]
    assert recovered.encode(text) == gpt2_encoding.encode(text)


def test_from_tiktoken_cl100k_round_trips():
    tiktoken = pytest.importorskip("tiktoken")
    try:
        encoding = tiktoken.get_encoding("cl100k_base")
    except Exception:  # noqa: BLE001 - offline, the file cannot be fetched
        pytest.skip("cl100k_base is not available offline")
    tokenizer = Tokenizer.from_tiktoken(encoding)
    for text in TRICKY_TEXTS:
        assert tokenizer.encode(text, allowed_special="none") == encoding.encode(text, disallowed_special=())


def test_gpt2_tokenizer_of_the_command_line_is_gpt2s_own(gpt2, gpt2_encoding):
    loaded = bpe.gpt2_tokenizer()  # from tiktoken's cached files (the tests fill its cache from the mirror)
    assert list(loaded.merges.items()) == list(gpt2.merges.items()) and loaded.special_tokens == gpt2.special_tokens


# ----------------------------------------------------------------------------------------------------------------------
# Files


def test_save_load_round_trip(small_tokenizer, gpt2, tmp_path):
    for name, tokenizer in [("small", small_tokenizer), ("gpt2", gpt2)]:
        tokenizer.save(tmp_path / name)
        loaded = Tokenizer.load(tmp_path / f"{name}.model")
        assert list(loaded.merges.items()) == list(tokenizer.merges.items())
        assert loaded.special_tokens == tokenizer.special_tokens and loaded.pattern == tokenizer.pattern
        assert loaded.byte_ids == tokenizer.byte_ids and loaded.vocab == tokenizer.vocab
        text = "Hello<|endoftext|> there, 'tis 2024 ✨"
        assert loaded.encode(text, allowed_special="all") == tokenizer.encode(text, allowed_special="all")
    vocab_lines = (tmp_path / "small.vocab").read_text(encoding="utf-8").splitlines()
    assert vocab_lines[0] == "[\\x00] 0" and len(vocab_lines) == small_tokenizer.vocab_size
    assert any(" <- [" in line for line in vocab_lines) and vocab_lines[-1].endswith("(special)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2.model", "gpt2.vocab", "small.model", "small.vocab"]


# ----------------------------------------------------------------------------------------------------------------------
# Bad input: one clear sentence each


def test_vocab_size_too_small():
    with pytest.raises(ValueError, match="at least 256 bytes \\+ 2 special tokens = 258"):
        Tokenizer.train("hello", vocab_size=257, special_tokens=("<a>", "<b>"))


@pytest.mark.parametrize("text", ["", "<|endoftext|><|endoftext|>"])
def test_empty_training_text(text):
    with pytest.raises(ValueError, match="training text is empty"):
        Tokenizer.train(text, vocab_size=300)


@pytest.mark.parametrize("special_tokens", [("",), ("<|endoftext|>", "")])
def test_empty_special_token(special_tokens):
    with pytest.raises(ValueError, match="a special token is empty: give each one some text"):
        Tokenizer.train("hello world", vocab_size=300, special_tokens=special_tokens)


def test_decode_unknown_id(small_tokenizer):
    with pytest.raises(ValueError, match="cannot decode token id 400: this tokenizer's ids are 0..399"):
        small_tokenizer.decode([65, 400])


@pytest.mark.parametrize("pattern, message", [
    ("gpt5(", "neither gpt2, gpt4, none nor a valid regex"),
    (r"(\w+)|\s+", "has a capture group; write groups as \\(\\?:...\\)"),
    (r"\w+", "skips some characters of the text"),  # the spaces would be lost
])
def test_bad_pattern(pattern, message):
    with pytest.raises(ValueError, match=message):
        Tokenizer.train("hello world, hello", 300, pattern=pattern)
    assert Tokenizer.train("hello world, hello", 260, pattern=r"\w+|\W+").encode("hello world") == \
        Tokenizer.train("hello world, hello", 260, pattern=r"\w+|\W+").encode("hello world")


def _model_lines(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "tok")
    return (tmp_path / "tok.model").read_text(encoding="utf-8").splitlines()


def test_load_wrong_version_or_another_file(small_tokenizer, tmp_path):
    lines = _model_lines(small_tokenizer, tmp_path)
    (tmp_path / "tok.model").write_text("\n".join(["nanoverse-bpe v2"] + lines[1:]) + "\n", encoding="utf-8")
    (tmp_path / "other.model").write_text("#version: 0.2\n", encoding="utf-8")
    small_tokenizer.save(tmp_path / "listing")
    for name in ("tok.model", "other.model", "listing.vocab"):
        with pytest.raises(ValueError, match=f"{name} is not a 'nanoverse-bpe v1' file .*: pass the PREFIX.model"):
            Tokenizer.load(tmp_path / name)


def test_load_accepts_a_byte_order_mark(small_tokenizer, tmp_path):
    """An editor on Windows may add one when the file is opened and saved."""
    small_tokenizer.save(tmp_path / "tok")
    (tmp_path / "bom.model").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "tok.model").read_bytes())
    assert Tokenizer.load(tmp_path / "bom.model").merges == small_tokenizer.merges


@pytest.mark.parametrize(
    "damage",
    [
        lambda lines: lines.__setitem__(20, "12 x 300"),  # not three integers
        lambda lines: lines.__setitem__(20, "999 3 300"),  # a merge of an unknown id
        lambda lines: lines.__setitem__(20, lines[19]),  # the same new id twice
        lambda lines: lines.__setitem__(1, "pattern [1]"),  # a pattern that is not a string
        lambda lines: lines.__setitem__(1, 'pattern "(unclosed"'),
        lambda lines: lines.__setitem__(5, "bytes 1 2 3"),
        lambda lines: lines.__setitem__(5, "bytes " + " ".join(["7"] * 256)),
        lambda lines: lines.__delitem__(slice(30, None)),  # truncated
        lambda lines: lines.append("1 2 3"),
        lambda lines: lines.__setitem__(3, '"<|endoftext|>" 300'),  # a special token on a merge's id
        lambda lines: lines.__setitem__(3, "5 511"),  # a special token that is not a JSON string
        lambda lines: lines.__setitem__(2, "specials two"),
    ],
)
def test_load_refuses_a_damaged_file_in_one_sentence(small_tokenizer, tmp_path, damage):
    lines = _model_lines(small_tokenizer, tmp_path)
    assert lines[5].startswith("bytes ") and lines[6].startswith("merges ")  # the layout the damage relies on
    damage(lines)
    (tmp_path / "tok.model").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="tok.model is damaged .*; save the tokenizer again") as error:
        Tokenizer.load(tmp_path / "tok.model")
    assert "\n" not in str(error.value)


def test_a_failed_save_keeps_the_old_model_and_no_fragment(small_tokenizer, tmp_path, monkeypatch):
    small_tokenizer.save(tmp_path / "tok")
    before = (tmp_path / "tok.model").read_bytes()

    def disk_full(source, destination):
        raise OSError("No space left on device")

    monkeypatch.setattr(bpe.os, "replace", disk_full)
    with pytest.raises(OSError):
        Tokenizer.train("other text, other merges " * 50, vocab_size=270).save(tmp_path / "tok")
    assert (tmp_path / "tok.model").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok.model", "tok.vocab"]


def test_a_longer_special_token_wins_over_its_prefix(shakespeare):
    tokenizer = Tokenizer.train(shakespeare[:5_000], vocab_size=300, special_tokens=("<|end|>", "<|end|>2"))
    assert tokenizer.encode("a<|end|>2b", allowed_special="all") == \
        tokenizer.encode("a") + [tokenizer.special_tokens["<|end|>2"]] + tokenizer.encode("b")


def test_decode_takes_an_array_or_tensor_of_ids(small_tokenizer):
    ids = small_tokenizer.encode("To be, or not to be")
    assert small_tokenizer.decode(np.array(ids, dtype=np.uint16)) == "To be, or not to be"  # as read from a .bin


def test_load_binary_file(tmp_path):
    (tmp_path / "x.model").write_bytes(b"\x80\x81\xff")
    with pytest.raises(ValueError, match="is not a 'nanoverse-bpe v1' file"):
        Tokenizer.load(tmp_path / "x.model")


# ----------------------------------------------------------------------------------------------------------------------
# Command line


def test_cli_train_encode_decode_show(shakespeare, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(shakespeare[:20_000], encoding="utf-8")
    prefix = str(tmp_path / "tok")
    tokenizer = bpe.main(["train", "--input", str(corpus), "--vocab_size", "300", "--out", prefix, "--special",
                          "<bos>", "<eos>"])
    output = capsys.readouterr().out
    assert "bytes per token" in output and (tmp_path / "tok.model").is_file() and (tmp_path / "tok.vocab").is_file()
    assert tokenizer.special_tokens == {"<bos>": 298, "<eos>": 299}
    ids = bpe.main(["encode", "--model", prefix + ".model", "First Citizen:<eos>"])
    assert capsys.readouterr().out.strip() == " ".join(map(str, ids)) and ids[-1] == 299
    bpe.main(["decode", "--model", prefix + ".model", *map(str, ids)])
    assert capsys.readouterr().out == "First Citizen:<eos>\n"
    bpe.main(["show", "--model", prefix + ".model", "--explain", "Citizen", "First Citizen"])
    output = capsys.readouterr().out
    assert "|" in output and "merge [" in output and "tokens for 13 bytes" in output


@pytest.mark.parametrize(
    "argv, message",
    [
        (["decode", "--model", "{model}", "5", "400"], "cannot decode token id 400"),
        (["decode", "--model", "{model}", "five"], "decode takes token ids as integers"),
        (["decode", "--model", "{model}"], "decode takes token ids as integers"),
        (["show", "--model", "{missing}", "hi"], "no model file"),
        (["train", "--input", "{missing}"], "No such file or directory"),
        (["train", "--input", "{model}", "--vocab_size", "100"], "vocab_size=100 is too small"),
        (["encode", "--model", "{model}"], "encode needs some text"),
        (["train", "--input", "{model}", "--special", ""], "a special token is empty"),
        (["show", "--model", "{vocab}", "hi"], "tok.vocab is not a 'nanoverse-bpe v1' file"),
        (["train", "--input", "{folder}"], "Is a directory"),
        (["train", "--input", "{tokens}"], "is full of NUL bytes, so it is binary (a token file?)"),
        (["train", "--input", "{model}", "--out", "{model}/tok"], "cannot create the folder of --out"),
    ],
)
def test_cli_errors_are_one_sentence(small_tokenizer, tmp_path, argv, message):
    small_tokenizer.save(tmp_path / "tok")
    (tmp_path / "train.bin").write_bytes(np.arange(60, dtype=np.uint16).tobytes() * 100)  # token ids, not text
    names = {"model": str(tmp_path / "tok.model"), "missing": str(tmp_path / "missing.model"),
             "vocab": str(tmp_path / "tok.vocab"), "folder": str(tmp_path), "tokens": str(tmp_path / "train.bin")}
    with pytest.raises(SystemExit) as error:
        bpe.main([word.format(**names) for word in argv])
    text = str(error.value.code)
    assert message in text and "\n" not in text and text.startswith("error: ")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--vocabsize", "300"], "unrecognized argument --vocabsize; did you mean --vocab_size?"),
        (["train", "--vocab", "300"], "unrecognized argument --vocab"),  # no guessing from a prefix
        (["show", "--model", "gpt2", "-f", "a.json", "hi"], "unrecognized argument -f"),
        (["train", "--input", "corpus.txt", "extra", "words"], "train reads its text from --input FILE"),
    ],
)
def test_cli_rejects_unknown_flags_and_stray_words(argv, message, capsys):
    """A misspelled flag must not quietly train the default tokenizer: argparse names it and stops (exit code 2)."""
    with pytest.raises(SystemExit) as error:
        bpe.main(argv)
    assert error.value.code == 2 and message in capsys.readouterr().err


def test_cli_reads_an_input_file_with_a_byte_order_mark(small_tokenizer, tmp_path, capsys):
    """Notepad saves UTF-8 with a byte order mark; it is not part of the text and must not become tokens."""
    small_tokenizer.save(tmp_path / "tok")
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + "First Citizen:".encode())
    ids = bpe.main(["encode", "--model", str(tmp_path / "tok.model"), "--input", str(tmp_path / "bom.txt")])
    assert ids == small_tokenizer.encode("First Citizen:")


# ----------------------------------------------------------------------------------------------------------------------
# Files on disk: permissions and the cached download


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_saved_files_follow_the_umask(small_tokenizer, tmp_path, umask, mode):
    """Like every other output file: readable by others unless the user's umask says otherwise."""
    previous = os.umask(umask)
    try:
        small_tokenizer.save(tmp_path / "tok")
    finally:
        os.umask(previous)
    assert {(tmp_path / name).stat().st_mode & 0o777 for name in ("tok.model", "tok.vocab")} == {mode}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok.model", "tok.vocab"]  # no temporary left behind
