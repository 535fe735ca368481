"""Tests for prepare_data.py: cleansing rules, input formats, the Tiny Shakespeare numbers, tokenizers, splits,
the PyTorch windows, and one clear message for each bad input."""

import functools
import hashlib
import http.server
import io
import json
import subprocess
import sys
import tarfile
import threading
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

import prepare_data as pd
from conftest import ROOT


def config_for(tmp_path, **overrides):
    """A fast configuration for small inline corpora: no picture, no minimum length."""
    base = pd.Config(dataset="custom", out_dir=str(tmp_path / "out"), eda=False, min_chars=1, tokenizer="char")
    return replace(base, **overrides)


def write(path, text, encoding="utf-8", errors="strict"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding, errors) if isinstance(text, str) else text)
    return path


def read_tokens(out_dir, name, meta):
    return np.fromfile(out_dir / f"{name}.bin", dtype=meta["dtype"])


POEMS = [f"Poem number {i}\nwith a second line, and a word {i * 7}." for i in range(20)]


# ----------------------------------------------------------------------------------------------------------------------
# Cleansing: one rule at a time, then the document-level drops.


@pytest.mark.parametrize(
    "raw, cleaned, rule",
    [
        ("cafe\u0301 au lait", "caf\u00e9 au lait", "nfc_changed_documents"),  # e + combining acute -> one code point
        ("one\r\ntwo\rthree", "one\ntwo\nthree", "crlf_to_lf"),
        ("bell\x07 and\x00 nul\ufeff", "bell and nul", "control_chars_removed"),
        ("<b>bold</b> [chorus] *star* #tag @you ~wave_", "bbold/b chorus star tag you wave", "special_chars_removed"),
        ("line one   \nline two\t", "line one\nline two", "trailing_spaces_trimmed"),
        ("   indented\n\tline", "indented\nline", "leading_spaces_trimmed"),
        ("too    many   spaces", "too many spaces", "repeated_spaces_collapsed"),
        ("verse one\n\n\n\n\n\nverse two", "verse one\n\n\nverse two", "blank_line_runs_collapsed"),
        ("\n\nbody\n\n", "body", "edge_blank_lines_trimmed"),
    ],
)
def test_each_cleansing_rule_fires_and_is_counted(raw, cleaned, rule):
    report = Counter()
    assert pd.clean_text(raw, pd.Config(), report) == cleaned
    assert report[rule] >= 1
    assert sum(report.values()) == report[rule], f"only {rule} should fire: {dict(report)}"


def test_cleansing_keeps_line_breaks_punctuation_and_optionally_indentation():
    poem = "Because I could not stop for Death \u2013\nHe kindly stopped for me \u2013\n\n  The Carriage held but just"
    kept = pd.clean_text(poem, pd.Config(keep_indentation=True), Counter())
    assert kept == poem  # nothing to change: dashes, "!", the stanza break and the indentation stay
    assert pd.clean_text(poem, pd.Config(), Counter()).endswith("\nThe Carriage held but just")


def test_documents_dropped_for_empty_short_and_duplicates():
    documents = [{"text": t} for t in ["Hello  World, again", "hello\nworld, AGAIN", "Hello  World, again", "", None,
                                       "tiny", "A different poem here"]]  # the second differs in a line break too
    kept, report = pd.cleanse(documents, pd.Config(min_chars=10, clean=True))
    assert [d["text"] for d in kept] == ["Hello World, again", "A different poem here"]
    assert report["exact_duplicates_dropped"] == 1  # the third one, identical after cleansing
    assert report["normalised_duplicates_dropped"] == 1  # case and whitespace folded
    assert report["empty_documents_dropped"] == 2  # "" and a null
    assert report["short_documents_dropped"] == 1
    assert report["documents_in"] == 7 and report["documents_kept"] == 2


# ----------------------------------------------------------------------------------------------------------------------
# Input formats, each with its metadata.


def test_reads_a_folder_of_txt_files_one_document_per_artist(tmp_path):
    write(tmp_path / "lyrics" / "artist-b.txt", "Second artist sings\nin two lines")
    write(tmp_path / "lyrics" / "artist-a.txt", "First artist sings\r\nwith CRLF")
    config = config_for(tmp_path, dataset="lyrics", input=str(tmp_path / "lyrics"), split="contiguous")
    meta = pd.prepare(config)
    records = [json.loads(line) for line in (tmp_path / "out" / "cleansed.jsonl").read_text().splitlines()]
    assert [(r["author"], r["source"]) for r in records] == [("artist-a", "artist-a.txt"), ("artist-b", "artist-b.txt")]
    assert records[0]["text"] == "First artist sings\nwith CRLF"
    assert meta["cleansing"]["crlf_to_lf"] == 1


def test_reads_json_list_of_objects_with_the_text_field_found_automatically(tmp_path):
    items = [{"poem": text, "author": f"Poet {i % 3}", "title": f"T{i}", "tags": ["sea", "night"]}
             for i, text in enumerate(POEMS)]
    path = write(tmp_path / "poems.json", json.dumps(items))
    documents = pd.read_documents(path, config_for(tmp_path))[0]
    assert documents[3] == {"text": POEMS[3], "author": "Poet 0", "title": "T3", "tags": ["sea", "night"],
                            "source": "poems.json"}


def test_reads_json_by_author_then_title_and_drops_the_null_poem(tmp_path):
    data = {"Poet A": {"First": POEMS[0], "Lost": None}, "Poet B": {"Second": POEMS[1]}}
    meta = pd.prepare(config_for(tmp_path, input=str(write(tmp_path / "by_author.json", json.dumps(data)))))
    records = [json.loads(line) for line in (tmp_path / "out" / "cleansed.jsonl").read_text().splitlines()]
    assert [(r["author"], r["title"]) for r in records] == [("Poet A", "First"), ("Poet B", "Second")]
    assert meta["cleansing"]["empty_documents_dropped"] == 1


def test_reads_json_lines_and_csv_with_a_text_column(tmp_path):
    jsonl = "\n".join(json.dumps({"lyrics": text, "artist": "X"}) for text in POEMS[:3]) + "\n\n"
    documents = pd.read_documents(write(tmp_path / "songs.jsonl", jsonl), config_for(tmp_path))[0]
    assert [d["text"] for d in documents] == POEMS[:3] and documents[0]["author"] == "X"
    # The Kaggle Poetry Foundation CSV: an unnamed index column, then Title, Poem, Poet, Tags; poems span lines.
    rows = ",Title,Poem,Poet,Tags\n"
    rows += "".join(f'{i},"T{i}","{text}",Poet {i},"love,sea"\n' for i, text in enumerate(POEMS[:4]))
    documents = pd.read_documents(write(tmp_path / "poems.csv", rows), config_for(tmp_path))[0]
    assert [d["text"] for d in documents] == POEMS[:4]
    assert documents[2]["author"] == "Poet 2" and documents[2]["title"] == "T2" and documents[2]["tags"] == "love,sea"


def test_text_field_is_a_familiar_name_in_any_case_or_named(tmp_path):
    items = [{"id": str(i), "verse_text": text, "Mood": "calm"} for i, text in enumerate(POEMS[:3])]
    path = write(tmp_path / "odd.json", json.dumps(items))
    with pytest.raises(SystemExit, match="no text field found in .*odd.json \\(fields: id, verse_text, Mood\\); name"):
        pd.read_documents(path, config_for(tmp_path))
    assert [d["text"] for d in pd.read_documents(path, config_for(tmp_path, text_field="verse_TEXT"))[0]] == POEMS[:3]
    named = pd.read_documents(path, config_for(tmp_path, text_field="mood"))[0]
    assert [d["text"] for d in named] == ["calm"] * 3
    upper = write(tmp_path / "upper.json", json.dumps([{"LYRICS": text} for text in POEMS[:2]]))
    assert [d["text"] for d in pd.read_documents(upper, config_for(tmp_path))[0]] == POEMS[:2]


def test_non_utf8_input_warns_with_the_file_and_count(tmp_path, capsys):
    path = write(tmp_path / "old.txt", "Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e \ufffd", encoding="latin-1", errors="replace")
    documents = pd.read_documents(path, config_for(tmp_path))[0]
    warning = capsys.readouterr().err
    assert "old.txt" in warning and "4 characters were replaced" in warning and "iconv" in warning
    assert documents[0]["text"].count("\ufffd") == 4


def test_input_sha256_of_a_file_and_of_a_folder(tmp_path):
    path = write(tmp_path / "one" / "a.txt", "some text here")
    assert pd.read_documents(path, config_for(tmp_path))[2] == hashlib.sha256(b"some text here").hexdigest()
    folder_hash = pd.read_documents(tmp_path / "one", config_for(tmp_path))[2]
    write(tmp_path / "one" / "b.txt", "another")
    assert pd.read_documents(tmp_path / "one", config_for(tmp_path))[2] != folder_hash


# ----------------------------------------------------------------------------------------------------------------------
# Tiny Shakespeare from the local mirror: the numbers everyone quotes, and an exact round trip.


def test_shakespeare_char_matches_the_well_known_numbers_and_round_trips(data_dir, tmp_path, monkeypatch):
    """The quick start: the shipped text, with no data mirror and no network (the tests refuse connections)."""
    monkeypatch.delenv("NANOVERSE_DATA")
    monkeypatch.chdir(tmp_path)
    meta = pd.main(["shakespeare_char", "--no-eda"])
    out = tmp_path / "data" / "shakespeare_char"
    raw = (data_dir / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    assert (meta["vocab_size"], meta["train_tokens"], meta["val_tokens"]) == (65, 1_003_854, 111_540)
    assert meta["format"] == "nanoverse-tokens-v1" and meta["dtype"] == "uint16" and meta["eot_id"] is None
    assert meta["split"] == "contiguous" and meta["sha256"] == pd.SHAKESPEARE["sha256"]
    assert meta["tokenizer_sha256"] == hashlib.sha256("".join(meta["itos"]).encode()).hexdigest()
    assert json.loads((out / "meta.json").read_text()) == meta
    ids = np.concatenate([read_tokens(out, "train", meta), read_tokens(out, "val", meta)])
    decoded = "".join(meta["itos"][i] for i in ids)
    assert decoded == (out / "cleansed.txt").read_text(encoding="utf-8") == raw  # used as published
    assert not (tmp_path / "data" / "tinyshakespeare").exists()  # nothing was downloaded


def test_tiny_shakespeare_ships_with_the_repository():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files", "datasets"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "datasets/tinyshakespeare.txt.gz" in tracked.split()
    text = pd.tiny_shakespeare()
    assert hashlib.sha256(text.encode()).hexdigest() == pd.SHAKESPEARE["sha256"] and len(text) == 1_115_394


def test_gpt2_ids_equal_tiktoken_and_shakespeare_matches_nanogpt(data_dir, gpt2_encoding, tmp_path):
    meta = pd.prepare(pd.Config(dataset="shakespeare", out_dir=str(tmp_path), eda=False))
    raw = (data_dir / "tinyshakespeare" / "input.txt").read_text()
    cut = int(len(raw) * 0.9)
    assert read_tokens(tmp_path, "train", meta).tolist() == gpt2_encoding.encode_ordinary(raw[:cut])
    assert read_tokens(tmp_path, "val", meta).tolist() == gpt2_encoding.encode_ordinary(raw[cut:])
    assert (meta["train_tokens"], meta["val_tokens"]) == (301_966, 36_059)  # nanoGPT's data/shakespeare numbers
    assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] == 50257 and meta["eot_id"] == 50256
    assert meta["tokenizer_sha256"] == hashlib.sha256(b"gpt2").hexdigest()


def test_gpt2_puts_endoftext_between_documents(tmp_path, gpt2_encoding):
    path = write(tmp_path / "poems.json", json.dumps([{"poem": text} for text in POEMS]))
    meta = pd.prepare(config_for(tmp_path, input=str(path), tokenizer="gpt2", val_fraction=0.25))
    train = read_tokens(tmp_path / "out", "train", meta).tolist()
    val = read_tokens(tmp_path / "out", "val", meta).tolist()
    assert meta["documents"] == {"train": 15, "val": 5}
    assert train.count(50256) == 14 and val.count(50256) == 4  # between documents, not after the last
    decoded = gpt2_encoding.decode(train).split("<|endoftext|>") + gpt2_encoding.decode(val).split("<|endoftext|>")
    assert sorted(decoded) == sorted(POEMS)  # each document whole, on exactly one side of the split


def test_contiguous_split_keeps_endoftext_between_documents(tmp_path, gpt2_encoding):
    """One cut in the running text (documents joined by blank lines): documents before it go to training whole, the
    one it falls in is cut in two, the rest go to validation, and <|endoftext|> still separates documents."""
    poems = ["The first poem walks along a quiet road", "A second poem sings of rain upon the hill",
             "The third poem ends the book with a night"]
    path = write(tmp_path / "poems.json", json.dumps([{"poem": text} for text in poems]))
    meta = pd.prepare(config_for(tmp_path, input=str(path), tokenizer="gpt2", split="contiguous", val_fraction=0.5))
    running = "\n\n".join(poems)  # 125 characters: the cut is at 62, 21 characters into the second poem
    cut = len(running) // 2 - len(poems[0] + "\n\n")
    assert 0 < cut < len(poems[1])
    encode = gpt2_encoding.encode_ordinary
    assert read_tokens(tmp_path / "out", "train", meta).tolist() == encode(poems[0]) + [50256] + encode(poems[1][:cut])
    assert read_tokens(tmp_path / "out", "val", meta).tolist() == encode(poems[1][cut:]) + [50256] + encode(poems[2])
    assert meta["eot_id"] == 50256 and meta["split"] == "contiguous"


def test_poems_mirror_keeps_authors_and_drops_the_null_poem(data_dir, tmp_path):
    meta = pd.prepare(pd.Config(dataset="poems", out_dir=str(tmp_path), eda=False, tokenizer="char"))
    assert meta["cleansing"]["documents_in"] == 2055 and meta["cleansing"]["empty_documents_dropped"] == 1
    assert meta["split"] == "doc" and sum(meta["documents"].values()) == meta["cleansing"]["documents_kept"]
    first = json.loads((tmp_path / "cleansed.jsonl").open().readline())
    assert first["author"] == "Michelle Menting" and first["title"] == "Objects Used to Prop Open a Window"
    assert first["text"].startswith("Dog bone, stapler,\ncribbage board, garlic press\nbecause this window")


# ----------------------------------------------------------------------------------------------------------------------
# Splits, the char round trip, and dtypes.


def test_a_validation_share_far_from_val_fraction_is_noted(capsys):
    train, val = pd.split_documents(["one", "two", "three"], pd.Config(split="doc", val_fraction=0.1))
    assert len(val) == 1 and "1 of 3 documents go to validation (33%, not the 10% of --val_fraction)" in \
        capsys.readouterr().out


def test_doc_split_is_deterministic_and_depends_on_the_seed(tmp_path):
    path = write(tmp_path / "poems.json", json.dumps([{"poem": text} for text in POEMS]))
    runs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        meta = pd.prepare(config_for(tmp_path, input=str(path), out_dir=str(tmp_path / name), seed=seed))
        runs.append((tmp_path / name / "train.bin").read_bytes() + b"|" + (tmp_path / name / "val.bin").read_bytes())
    assert runs[0] == runs[1] and runs[0] != runs[2]
    val_documents = "".join(meta["itos"][i] for i in read_tokens(tmp_path / "c", "val", meta)).split("\n\n")
    assert len(val_documents) == 2 and all(document in POEMS for document in val_documents)  # whole documents


def test_char_contiguous_round_trip_on_cleaned_text(tmp_path):
    path = write(tmp_path / "play.txt", "ACT I.  \r\n\r\nEnter  ghost.\n\n\n\n\nExit, pursued by a bear.\n")
    meta = pd.prepare(config_for(tmp_path, input=str(path)))
    ids = np.concatenate([read_tokens(tmp_path / "out", "train", meta), read_tokens(tmp_path / "out", "val", meta)])
    cleaned = (tmp_path / "out" / "cleansed.txt").read_text()
    assert "".join(meta["itos"][i] for i in ids) == cleaned == "ACT I.\n\nEnter ghost.\n\n\nExit, pursued by a bear."
    assert meta["itos"] == sorted(set(cleaned)) and meta["split"] == "contiguous"


def test_a_vocabulary_too_large_for_uint16_takes_uint32_and_65536_still_fits(tmp_path):
    characters = [chr(c) for c in range(0x4E00, 0x4E00 + 66_000 + 2048) if not 0xD800 <= c < 0xE000]
    path = write(tmp_path / "many.txt", "".join(characters))
    meta = pd.prepare(config_for(tmp_path, input=str(path), clean=False))
    assert meta["dtype"] == "uint32" and meta["vocab_size"] > 65536
    ids = np.concatenate([read_tokens(tmp_path / "out", "train", meta), read_tokens(tmp_path / "out", "val", meta)])
    assert "".join(meta["itos"][i] for i in ids) == "".join(characters)
    exactly = characters[:65_536]  # ids 0..65535: the largest vocabulary uint16 still holds
    meta = pd.prepare(config_for(tmp_path, input=str(write(tmp_path / "many.txt", "".join(exactly))), clean=False))
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 65_536
    ids = np.concatenate([read_tokens(tmp_path / "out", "train", meta), read_tokens(tmp_path / "out", "val", meta)])
    assert ids.max() == 65_535 and "".join(meta["itos"][i] for i in ids) == "".join(exactly)


# ----------------------------------------------------------------------------------------------------------------------
# The PyTorch side.


def test_token_windows_target_is_input_shifted_by_one(tmp_path):
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "train.bin")
    windows = pd.TokenWindows(tmp_path / "train.bin", "uint16", block_size=8)
    assert len(windows) == 92
    inputs, targets = windows[91]
    assert inputs.tolist() == list(range(91, 99)) and targets.tolist() == list(range(92, 100))


def test_main_writes_every_file_and_shows_batches(tmp_path, capsys):
    path = write(tmp_path / "poems.json", json.dumps([{"poem": t, "author": f"P{i % 4}"} for i, t in enumerate(POEMS)]))
    meta = pd.main(["custom", "--input", str(path), "--out_dir", str(tmp_path / "out"), "--tokenizer", "char",
                    "--show_batches", "--block_size", "8", "--batch_size", "2"])
    out = capsys.readouterr()
    assert out.err == ""
    names = {"cleansed.txt", "cleansed.jsonl", "eda.json", "eda.png", "train.bin", "val.bin", "meta.json"}
    assert names == {p.name for p in (tmp_path / "out").iterdir()}
    eda = json.loads((tmp_path / "out" / "eda.json").read_text())
    assert eda["documents"] == 20 and eda["authors"] == 4 and len(eda["samples"]) == 3
    assert eda["documents_per_author"][0][1] == 5 and eda["words_per_document"]["p50"] == 9
    assert "train (RandomSampler): inputs (2, 8) torch.int64" in out.out
    assert (tmp_path / "out" / "eda.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert meta["train_tokens"] == (tmp_path / "out" / "train.bin").stat().st_size // 2


def test_bpe_tokenizer_trains_on_the_training_split(tmp_path):
    import bpe

    # Each poem repeats a pair of letters that no other poem has ("qb", "qc", ...). At 50 repeats the pair of every
    # training poem is among the first merges, so had the tokenizer seen validation text, its pairs would be too.
    markers = ["q" + letter for letter in "bcdfghjklmnprstvwxyz"]
    poems = [poem + "\n" + " ".join([marker] * 50) for poem, marker in zip(POEMS, markers)]
    path = write(tmp_path / "poems.json", json.dumps([{"poem": t} for t in poems]))
    meta = pd.prepare(config_for(tmp_path, input=str(path), tokenizer="bpe", vocab_size=300))
    out = tmp_path / "out"
    assert meta["bpe_model"] == "bpe.model" and (out / "bpe.model").exists()
    tokenizer = bpe.Tokenizer.load(str(out / "bpe.model"))
    assert tokenizer.vocab_size == meta["vocab_size"] and meta["eot_id"] == tokenizer.special_tokens["<|endoftext|>"]
    val = read_tokens(out, "val", meta).tolist()
    documents = tokenizer.decode(val).split("<|endoftext|>")
    assert len(documents) == meta["documents"]["val"] == 2 and all(d in poems for d in documents)
    in_val = [marker for marker in markers if any(marker in document for document in documents)]
    learned = [tokenizer.vocab[i] for i in tokenizer.merges.values()]
    assert len(in_val) == 2 and not any(marker.encode() in token for marker in in_val for token in learned)
    assert all(any(marker.encode() in token for token in learned) for marker in markers if marker not in in_val)


# ----------------------------------------------------------------------------------------------------------------------
# Bad input: one sentence that names the problem and the fix.


@pytest.mark.parametrize(
    "file_name, content, overrides, message",
    [
        (None, None, {"input": "no/such/file.txt"}, "does not exist"),
        ("bad.json", '[{"poem": "a"},\n {"poem": "b",}]', {}, r"not valid JSON \(line 2, column"),
        ("bad.jsonl", '{"poem": "a"}\n\n{"poem": \n', {}, r"bad.jsonl is not valid JSON \(line 3"),
        ("bad.csv", 'Title,Poem\nA,"fine"\nB,"stray"quote\n', {}, r"not readable as CSV \(line 3"),
        ("numbers.json", '[{"id": 1, "score": 2}]', {}, "no text field found .* --text_field"),
        ("named.json", '[{"poem": "some poem text"}]', {"text_field": "lyrics"}, "--text_field lyrics is not a"),
        ("empty.json", '[{"poem": ""}, {"poem": "   "}]', {}, "nothing is left after cleansing"),
        ("one.txt", "just one document", {"split": "doc"}, "needs at least 2 documents"),
        (None, None, {"input": ""}, "custom dataset needs --input"),
        pytest.param("train.bin", np.arange(60, dtype=np.uint16).tobytes() * 100, {}, "full of NUL bytes, so it is "
                     "binary", id="a token file"),
    ],
)
def test_bad_input_gets_one_clear_sentence(tmp_path, file_name, content, overrides, message):
    config = config_for(tmp_path, **overrides)
    if file_name:
        config.input = str(write(tmp_path / file_name, content))
    with pytest.raises(SystemExit, match=message):
        pd.prepare(config)


def test_no_network_and_no_local_copy_says_how_to_supply_the_file(tmp_path, monkeypatch):
    """A script pasted alone (no shipped copy beside it) downloads Tiny Shakespeare; offline it says what to do."""
    monkeypatch.delenv("NANOVERSE_DATA", raising=False)
    monkeypatch.setitem(pd.SHAKESPEARE, "shipped", tmp_path / "not-shipped.txt.gz")
    config = pd.Config(dataset="shakespeare_char", cache_dir=str(tmp_path / "cache"), out_dir=str(tmp_path / "out"))
    with pytest.raises(SystemExit, match="could not download .*input.txt.*pass it with --input"):
        pd.prepare(config)  # the test harness refuses network connections
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # no half-downloaded file left behind
    for name in ("lyrics", "poems"):
        with pytest.raises(SystemExit, match=f"{name} dataset has no local copy .*kaggle.com.*--input"):
            pd.prepare(pd.Config(dataset=name, out_dir=str(tmp_path / "out")))


@pytest.fixture
def web_server(tmp_path, monkeypatch):
    """A web server on this machine serving tmp_path/site: (folder, base URL)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # urllib would send even a local request through a configured proxy
    site = tmp_path / "site"
    site.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield site, f"http://127.0.0.1:{server.server_address[1]}"
        server.shutdown()


def test_download_checks_sha256_caches_and_never_leaves_a_partial_file(web_server, tmp_path, monkeypatch):
    site, base = web_server
    served = write(site / "input.txt", "To be, or not to be\n" * 100)
    expected = hashlib.sha256(served.read_bytes()).hexdigest()
    target = tmp_path / "cache" / "tinyshakespeare" / "input.txt"
    with pytest.raises(SystemExit, match="not the expected one"):
        pd.download(f"{base}/input.txt", target, "0" * 64)
    assert list(target.parent.iterdir()) == []
    assert pd.download(f"{base}/input.txt", target, expected).read_bytes() == served.read_bytes()
    # Without the shipped copy, Tiny Shakespeare comes from the cache, checked: a damaged copy is fetched again.
    monkeypatch.delenv("NANOVERSE_DATA", raising=False)
    monkeypatch.setattr(pd, "SHAKESPEARE", {**pd.SHAKESPEARE, "shipped": tmp_path / "none.gz",
                                            "url": f"{base}/input.txt", "sha256": expected})
    target.write_bytes(b"To be, or not")
    assert pd.tiny_shakespeare(tmp_path / "cache") == served.read_text() == target.read_text()
    served.unlink()  # from the cache now: the file is gone from the server
    assert pd.tiny_shakespeare(tmp_path / "cache") == target.read_text()


def test_a_cut_off_download_is_named_and_not_kept(tmp_path, monkeypatch):
    class CutOff(io.BytesIO):  # the server promised 5,000 bytes and closed the connection after 1,000
        headers = {"Content-Length": "5000"}

    monkeypatch.setattr(pd.urllib.request, "urlopen", lambda url, timeout: CutOff(b"x" * 1000))
    with pytest.raises(SystemExit, match="got 1,000 of 5,000 bytes.*run again"):
        pd.download("https://example.org/archive.tar", tmp_path / "cache" / "archive.tar")
    assert list((tmp_path / "cache").iterdir()) == []  # neither the fragment nor a file under the final name


@pytest.mark.parametrize("suffix, content", [
    (".csv", "Title,Poem,Poet\nT0,\"%s\",A\nT1,\"%s\",B\n" % (POEMS[0], POEMS[1])),
    (".json", json.dumps([{"title": "T0", "poem": POEMS[0]}, {"title": "T1", "poem": POEMS[1]}])),
    (".jsonl", "".join(json.dumps({"title": f"T{i}", "poem": POEMS[i]}) + "\n" for i in range(2))),
])
def test_utf8_byte_order_mark_is_accepted(tmp_path, suffix, content):
    """Excel and Notepad begin UTF-8 files with a byte order mark; it must not eat the first CSV column's name."""
    path = write(tmp_path / f"bom{suffix}", b"\xef\xbb\xbf" + content.encode())
    documents = pd.read_documents(path, config_for(tmp_path))[0]
    assert [(d["title"], d["text"]) for d in documents] == [("T0", POEMS[0]), ("T1", POEMS[1])]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--out_dir", "{file}"], "cannot create the folder .*taken.txt"),
        (["--out_dir", "{file}/inside"], "cannot create the folder .*inside"),
        (["--val_fraction", "1.5"], "--val_fraction must be between 0 and 1, not 1.5"),
        (["--tokenizer", "bpe", "--vocab_size", "100"], "cannot train the BPE tokenizer .*vocab_size=100 is too small"),
    ],
)
def test_bad_options_get_one_clear_sentence(tmp_path, argv, message):
    taken = write(tmp_path / "taken.txt", "not a folder")
    argv = [word.format(file=taken) for word in argv]
    with pytest.raises(SystemExit, match=message):
        pd.main(["shakespeare_char", "--no-eda", *argv] + ([] if "--out_dir" in argv else
                                                            ["--out_dir", str(tmp_path / "out")]))
    assert not (tmp_path / "out").exists() and taken.read_text() == "not a folder"


@pytest.mark.parametrize("argv, message", [(["--tokenizer", "words"], "invalid choice: 'words'"),
                                           (["dakshina", "--lang", "xx"], "invalid choice: 'xx'")])
def test_choices_are_named_by_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as error:
        pd.main(argv)
    assert error.value.code == 2 and message in capsys.readouterr().err


def test_a_failing_run_writes_nothing(tmp_path):
    """Everything that can fail is checked before the first file is written: the output folder keeps its old run."""
    out = tmp_path / "out"
    write(out / "meta.json", "from the last run")
    config = config_for(tmp_path, input=str(write(tmp_path / "one.txt", "just one document")), eda=True, split="doc")
    with pytest.raises(SystemExit, match="needs at least 2 documents"):
        pd.prepare(config)
    assert [p.name for p in out.iterdir()] == ["meta.json"] and (out / "meta.json").read_text() == "from the last run"


def test_a_stray_nul_byte_in_a_short_text_is_cleansed_not_refused(tmp_path):
    documents = pd.read_documents(write(tmp_path / "poem.txt", "hello\x00 world"), config_for(tmp_path))[0]
    assert documents[0]["text"] == "hello\x00 world"  # read as text; the control-character rule removes the NUL


def test_a_run_stopped_while_writing_leaves_no_meta_json(tmp_path, monkeypatch):
    """meta.json goes first and is written last: an interrupted run never leaves new token files under an old
    meta.json (here a char run is redone with GPT-2 ids, and stopped while val.bin is written)."""
    path = write(tmp_path / "poems.json", json.dumps(POEMS))
    pd.prepare(config_for(tmp_path, input=str(path)))
    assert (tmp_path / "out" / "meta.json").exists()
    write_atomic = pd.write_atomic

    def interrupted(target, data):
        if target.name == "val.bin":
            raise KeyboardInterrupt
        write_atomic(target, data)

    monkeypatch.setattr(pd, "write_atomic", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pd.prepare(config_for(tmp_path, input=str(path), tokenizer="bpe", vocab_size=300))
    assert (tmp_path / "out" / "train.bin").exists() and not (tmp_path / "out" / "meta.json").exists()
    assert not (tmp_path / "out" / "bpe.model").exists()  # the tokenizer's files come after the token files


def test_a_failed_write_keeps_the_old_file_and_no_fragment(tmp_path, monkeypatch):
    target = write(tmp_path / "train.bin", b"old tokens")

    def disk_full(source, destination):
        raise OSError("No space left on device")

    monkeypatch.setattr(pd.os, "replace", disk_full)
    with pytest.raises(OSError):
        pd.write_atomic(target, b"new tokens, only half written")
    assert target.read_bytes() == b"old tokens" and [p.name for p in tmp_path.iterdir()] == ["train.bin"]


def test_json_lines_and_csv_keep_unicode_line_separators_inside_a_field(tmp_path):
    """str.splitlines() also breaks at U+2028, U+0085 and form feed; a JSON string or a CSV cell may hold them."""
    jsonl = "".join(json.dumps({"poem": text}, ensure_ascii=False) + "\n" for text in ("one\u2028two", "three\x85"))
    documents = pd.read_documents(write(tmp_path / "p.jsonl", jsonl), config_for(tmp_path))[0]
    assert [d["text"] for d in documents] == ["one\u2028two", "three\x85"]
    csv_text = 'Title,Poem\nWait\x85 what,"a poem\nof two lines"\nPage\u2028two,"another"\n'
    documents = pd.read_documents(write(tmp_path / "p.csv", csv_text), config_for(tmp_path))[0]
    assert [d["text"] for d in documents] == ["a poem\nof two lines", "another"]  # two rows, not four
    assert documents[0]["title"].startswith("Wait") and documents[1]["title"].endswith("two")


@pytest.mark.parametrize("argv, message", [
    (["--vocabsize", "512"], "unrecognized argument --vocabsize; did you mean --vocab_size?"),
    (["--vocab", "512"], "unrecognized argument --vocab"),  # a prefix is never taken for the flag it starts
    (["--seeds", "3"], "unrecognized argument --seeds; did you mean --seed?"),
])
def test_unknown_flag_is_an_error_with_a_suggestion(argv, message, capsys):
    """A misspelled flag would otherwise run with the default it meant to change."""
    with pytest.raises(SystemExit) as error:
        pd.main(["shakespeare_char", *argv])
    assert error.value.code == 2 and message in capsys.readouterr().err


def test_one_cached_download_serves_prepare_data_and_bpe(data_dir, tmp_path, monkeypatch):
    """Without the shipped copy, Tiny Shakespeare is cached once at data/tinyshakespeare/input.txt for both."""
    import bpe

    monkeypatch.delenv("NANOVERSE_DATA")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(pd.SHAKESPEARE, "shipped", tmp_path / "not-shipped.txt.gz")
    text = (data_dir / "tinyshakespeare" / "input.txt").read_text()
    write(tmp_path / "data" / "tinyshakespeare" / "input.txt", text)
    assert pd.tiny_shakespeare() == text  # the network is blocked: no download
    tokenizer = bpe.main(["train", "--vocab_size", "260", "--out", str(tmp_path / "tok"), "--no-verbose"])
    assert tokenizer.vocab_size == 260


def test_command_line_error_is_one_line_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "prepare_data.py", "custom", "--input", str(tmp_path / "missing.txt")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: --input {tmp_path / 'missing.txt'} does not exist; "
                                                  f"pass an existing file or folder"]


def test_a_cache_dir_that_is_a_file_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("NANOVERSE_DATA", raising=False)
    monkeypatch.setitem(pd.SHAKESPEARE, "shipped", tmp_path / "not-shipped.txt.gz")
    taken = write(tmp_path / "taken.txt", "not a folder")
    with pytest.raises(SystemExit, match="cannot create the folder .*taken.txt.*name a writable one"):
        pd.main(["shakespeare_char", "--cache_dir", str(taken), "--out_dir", str(tmp_path / "out")])
    assert taken.read_text() == "not a folder"


def test_help_works_without_docstrings():
    """python -OO strips docstrings; the description of --help comes from the module docstring."""
    result = subprocess.run([sys.executable, "-OO", "prepare_data.py", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "--min_chars" in result.stdout, result.stderr


def test_retraining_bpe_on_other_text_changes_the_tokenizer_fingerprint(tmp_path):
    first = write(tmp_path / "a.json", json.dumps(POEMS))
    second = write(tmp_path / "b.json", json.dumps([poem.upper() + " zz" for poem in POEMS]))
    metas = [pd.prepare(config_for(tmp_path, input=str(path), out_dir=str(tmp_path / name), tokenizer="bpe",
                                   vocab_size=280)) for name, path in (("a", first), ("b", second), ("c", first))]
    assert metas[0]["tokenizer_sha256"] == hashlib.sha256((tmp_path / "a" / "bpe.model").read_bytes()).hexdigest()
    assert metas[0]["tokenizer_sha256"] != metas[1]["tokenizer_sha256"]
    assert metas[0]["tokenizer_sha256"] == metas[2]["tokenizer_sha256"]  # the same text, the same merges


# ----------------------------------------------------------------------------------------------------------------------
# Dakshina: lexicons copied byte for byte from a folder or the archive; a crafted archive is refused.

LEXICON = "dakshina_dataset_v1.0/hi/lexicons/hi.translit.sampled.{}.tsv"


def make_archive(path, members):
    """A tar of (name, bytes) regular files, or (name, TarInfo type, link target) for links and folders."""
    with tarfile.open(path, "w") as tar:
        for name, *rest in members:
            info = tarfile.TarInfo(name)
            if len(rest) == 1:
                info.size = len(rest[0])
                tar.addfile(info, io.BytesIO(rest[0]))
            else:
                info.type, info.linkname = rest
                tar.addfile(info)
    return path


@pytest.fixture
def hindi(data_dir):
    return {split: (data_dir / "dakshina" / "hi" / f"hi.translit.sampled.{split}.tsv").read_bytes()
            for split in ("train", "dev")} | {"test": "नमस्ते\tnamaste\t1\n".encode()}


def test_dakshina_from_a_good_archive_is_copied_byte_for_byte(hindi, tmp_path):
    archive = make_archive(tmp_path / "d.tar", [(LEXICON.format(split), data) for split, data in hindi.items()]
                           + [("dakshina_dataset_v1.0/README.md", b"readme")])
    meta = pd.main(["dakshina", "--lang", "hi", "--input", str(archive), "--out_dir", str(tmp_path / "out")])
    for split, data in hindi.items():
        assert (tmp_path / "out" / f"hi.translit.sampled.{split}.tsv").read_bytes() == data
        assert meta["splits"][split]["rows"] == data.count(b"\n")
    assert meta["splits"]["train"]["rows"] == 44_204  # every row: several romanizations of one word stay
    assert json.loads((tmp_path / "out" / "meta.json").read_text()) == meta
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["hi.translit.sampled.dev.tsv",
                                                                     "hi.translit.sampled.test.tsv",
                                                                     "hi.translit.sampled.train.tsv", "meta.json"]


@pytest.mark.parametrize("members, message", [
    ([("dakshina_dataset_v1.0/../../evil.tsv", b"x")], "points outside the archive's folder"),
    ([("/etc/evil.tsv", b"x")], "points outside the archive's folder"),
    ([(LEXICON.format("train"), tarfile.SYMTYPE, "/etc/passwd")], "is a link, not a file"),
    ([(LEXICON.format("train"), tarfile.LNKTYPE, "dakshina_dataset_v1.0/README.md")], "is a link, not a file"),
    ([(LEXICON.format("dev"), tarfile.DIRTYPE, "")], "is a folder, not a file"),
    ([("dakshina_dataset_v1.0/README.md", b"readme")], "it has no hi lexicons"),
])
def test_a_crafted_dakshina_archive_is_refused_in_one_sentence(members, message, tmp_path):
    archive = make_archive(tmp_path / "d.tar", members)
    with pytest.raises(SystemExit, match=message) as error:
        pd.main(["dakshina", "--input", str(archive), "--out_dir", str(tmp_path / "out")])
    assert "\n" not in str(error.value) and str(error.value).startswith("error: ")
    assert not (tmp_path / "out").exists() and not (tmp_path / "etc").exists()


def test_a_damaged_dakshina_archive_or_lexicon_is_named(hindi, tmp_path):
    (tmp_path / "cut.tar").write_bytes(make_archive(tmp_path / "d.tar", [(LEXICON.format("train"), hindi["train"])])
                                       .read_bytes()[:5000])
    with pytest.raises(SystemExit, match=r"could not read .*cut.tar \(ReadError\), so it is damaged or cut short"):
        pd.main(["dakshina", "--input", str(tmp_path / "cut.tar"), "--out_dir", str(tmp_path / "out")])
    archive = make_archive(tmp_path / "d.tar", [(LEXICON.format("train"), hindi["train"] + b"x")])
    with pytest.raises(SystemExit, match="hi.translit.sampled.train.tsv in .* is not the published lexicon"):
        pd.main(["dakshina", "--input", str(archive), "--out_dir", str(tmp_path / "out")])


def test_dakshina_from_the_mirror_writes_the_splits_it_has_without_downloading(data_dir, tmp_path, monkeypatch,
                                                                               capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pd, "download", lambda *arguments: pytest.fail("must not download"))
    meta = pd.main(["dakshina", "--lang", "hi"])
    out = tmp_path / "data" / "dakshina" / "hi"
    assert set(meta["splits"]) == {"train", "dev"} and "(no test split in " in capsys.readouterr().out
    assert (out / "hi.translit.sampled.dev.tsv").read_bytes() == \
        (data_dir / "dakshina" / "hi" / "hi.translit.sampled.dev.tsv").read_bytes()
    # An unpacked archive works too, and so does a folder that holds only some lexicons.
    unpacked = tmp_path / "unpacked" / "dakshina_dataset_v1.0" / "ta" / "lexicons"
    write(unpacked / "ta.translit.sampled.train.tsv", (data_dir / "dakshina" / "ta" / "ta.translit.sampled.train.tsv")
          .read_bytes())
    meta = pd.main(["dakshina", "--lang", "ta", "--input", str(tmp_path / "unpacked")])
    assert list(meta["splits"]) == ["train"] and meta["splits"]["train"]["rows"] == 68_218
    with pytest.raises(SystemExit, match="found no bn.translit.sampled.train.tsv in .*unpacked"):
        pd.main(["dakshina", "--lang", "bn", "--input", str(tmp_path / "unpacked")])


# ----------------------------------------------------------------------------------------------------------------------
# Web pages: saved .html files, and a .urls file fetched politely from a site on this machine.

POEM_PAGE = """<!doctype html><html><head><title>  The  Tyger </title><meta name="Author" content="William Blake">
<style>p {{ color: red }}</style><script>var menu = "<p>not a poem</p>";</script></head>
<body><nav><a href="/">Home</a> <a href="/poems">Poems</a></nav><header>Poetry &amp; more</header>
<div class="poem-body" id="poem"><p>Tyger Tyger, burning bright, <br>In the forests of the night;<br>
What immortal hand or eye,<br/>Could frame thy fearful symmetry?</p>
<p>In what distant deeps or skies&#8230;<br>Burnt the fire of thine eyes?</p></div>
<div class="comments"><p>{comment}</p></div><footer>&copy; 2026 a site</footer></body></html>"""
TYGER = ("Tyger Tyger, burning bright,\nIn the forests of the night;\nWhat immortal hand or eye,\n"
         "Could frame thy fearful symmetry?\n\nIn what distant deeps or skies\u2026\nBurnt the fire of thine eyes?")


def test_a_saved_page_gives_its_visible_text_title_and_author(tmp_path):
    write(tmp_path / "pages" / "tyger.html", POEM_PAGE.format(comment="Lovely &lt;3"))
    write(tmp_path / "pages" / "notes.txt", "A plain text file beside the pages, read as it is.")
    documents = pd.read_documents(tmp_path / "pages", config_for(tmp_path))[0]
    page = next(d for d in documents if d["source"] == "tyger.html")
    assert page["title"] == "The Tyger" and page["author"] == "William Blake"
    assert page["text"] == TYGER + "\n\nLovely <3"  # no menu, header, script, style or footer; entities decoded
    for select in ("#poem", ".poem-body"):
        selected = pd.read_documents(tmp_path / "pages" / "tyger.html", config_for(tmp_path, select=select))[0]
        assert selected[0]["text"] == TYGER  # only the poem: not the comments after it


class Site(http.server.BaseHTTPRequestHandler):
    """Two poem pages, a robots.txt that disallows /private/, a missing page and a redirect to a file: address."""
    pages = {"/robots.txt": "User-agent: *\nDisallow: /private/\n",
             "/poems/tyger.html": POEM_PAGE.format(comment="first comment"),
             "/poems/lamb.html": POEM_PAGE.replace("Tyger Tyger", "Little Lamb").format(comment="second"),
             "/private/draft.html": POEM_PAGE.format(comment="a draft")}
    requests = []

    def do_GET(self):
        Site.requests.append((self.path, self.headers.get("User-Agent")))
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/etc/passwd")
            self.end_headers()
            return
        body = self.pages.get(self.path)
        self.send_response(200 if body else 404)
        self.end_headers()
        self.wfile.write((body or "not here").encode())

    def log_message(self, *args):
        pass


def test_a_urls_file_is_fetched_politely_and_cached(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Site) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        urls = write(tmp_path / "poems.urls", f"# poems to read\n{base}/poems/tyger.html\n{base}/poems/lamb.html  # b\n"
                     f"{base}/private/draft.html\n{base}/poems/missing.html\n{base}/moved\nftp://example.org/x\n")
        argv = ["custom", "--input", str(urls), "--out_dir", str(tmp_path / "out"), "--select", "#poem", "--delay", "0",
                "--tokenizer", "char", "--no-eda", "--val_fraction", "0.5"]
        meta = pd.main(argv)
        printed = capsys.readouterr().out
        assert "pages: 2 fetched, 0 cached, 2 skipped, 2 failed" in printed
        assert f"{base}/private/draft.html skipped: its site's robots.txt disallows it" in printed
        assert f"{base}/moved failed: <urlopen error unknown url type: ftp>" in printed  # a redirect to ftp:// refused
        assert f"{base}/poems/missing.html failed: HTTP Error 404" in printed
        records = [json.loads(line) for line in (tmp_path / "out" / "cleansed.jsonl").read_text().splitlines()]
        assert [r["source"] for r in records] == [f"{base}/poems/tyger.html", f"{base}/poems/lamb.html"]
        assert records[0]["text"] == TYGER and records[1]["text"].startswith("Little Lamb")
        assert records[0]["title"] == "The Tyger" and meta["documents"] == {"train": 1, "val": 1}
        fetched = [path for path, agent in Site.requests if agent and agent.startswith("nanoverse")]
        assert "/private/draft.html" not in [path for path, _ in Site.requests]
        assert fetched == ["/poems/tyger.html", "/poems/lamb.html", "/poems/missing.html", "/moved"]
        Site.requests.clear()
        pd.main(argv)  # a second run reads the two pages from out/pages and fetches nothing new
        assert "pages: 0 fetched, 2 cached, 2 skipped, 2 failed" in capsys.readouterr().out
        assert [path for path, _ in Site.requests if path.startswith("/poems/t")] == []
        server.shutdown()
