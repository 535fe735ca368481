"""Prepare text for the models: read it, cleanse it, explore it, tokenize it, split it, and write token files.

Every model script in this repository trains on the same two files, `train.bin` and `val.bin` (a flat array of token
ids, no header) described by `meta.json`. This script makes them from raw creative text (plays, lyrics, poems, or
any text you bring), and along the way shows the steps that decide how good a small language model can get: what is
in the corpus (an exploratory report), what to throw away (cleansing rules, each counted), how text becomes integers
(characters, GPT-2's byte-level BPE, or a BPE trained here with bpe.py), and how a validation set is kept honest
(split by document, so that no poem is half in training and half in validation). The last part shows how PyTorch
serves windows of the token file to a model: Dataset, random_split, DataLoader and its samplers (--show_batches).
References: Karpathy's char-rnn and nanoGPT data preparation (the Tiny Shakespeare numbers), Radford et al. 2019
(GPT-2 tokenizer), https://pytorch.org/docs/stable/data.html (Dataset and DataLoader).

Run:
    CPU:    python prepare_data.py shakespeare_char            # ~4 s: 65 symbols, 1,003,854 / 111,540 tokens
            python prepare_data.py poems --tokenizer gpt2       # Poetry Foundation poems: needs $NANOVERSE_DATA
                                                                # (the data mirror) or --input PATH (Kaggle's CSV)
            python prepare_data.py custom --input my_texts/ --tokenizer bpe --vocab_size 1024 --show_batches
    GPU:    the same commands; this script does not use the GPU
    Colab:  !python prepare_data.py shakespeare_char --show_batches
"""

import argparse
import codecs
import csv
import hashlib
import inspect
import io
import json
import os
import random
import re
import sys
import unicodedata
import urllib.request
from collections import Counter
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import regex
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler, random_split
from tqdm import tqdm


@dataclass
class Config:
    # what to read
    dataset: str = "shakespeare_char"  # shakespeare_char | shakespeare | lyrics | poems | custom
    input: str = ""  # a file or folder to read instead of the dataset's local copy or download
    data_dir: str = ""  # local data folder laid out like the mirror (default: $NANOVERSE_DATA)
    cache_dir: str = "data"  # downloads are kept here, laid out like the mirror (checked by sha256 on every use)
    text_field: str = ""  # the text column/key in JSON, JSON Lines or CSV (default: found automatically)
    encoding: str = "utf-8"  # text encoding of the input; bytes that do not decode are replaced, with a warning
    # cleansing
    clean: bool = None  # cleanse, then drop short and duplicate documents (default on; off for Tiny Shakespeare)
    remove_chars: str = "@~{}[]<>|^_*#`\\"  # characters deleted as markup debris (line breaks and punctuation stay)
    keep_indentation: bool = False  # keep the leading spaces of each line (some poems indent on purpose)
    min_chars: int = 20  # documents shorter than this after cleansing are dropped (not with --no-clean)
    # tokenize and split
    tokenizer: str = ""  # char | gpt2 | bpe (default: the dataset's, gpt2 for the rest)
    vocab_size: int = 1024  # vocabulary size for --tokenizer bpe
    split: str = ""  # doc (seeded shuffle of documents) | contiguous (one cut); default: contiguous for a single text
    val_fraction: float = 0.1  # share of the corpus held out for validation
    seed: int = 1337  # seed of the document shuffle, the samples and the batches shown
    dtype: str = "auto"  # auto | uint16 | uint32: integer type of the token files (auto: uint16 when it fits)
    # output
    out_dir: str = ""  # where the files go (default: data/<dataset>)
    eda: bool = True  # write the exploratory report eda.json and the picture eda.png
    samples: int = 3  # random cleansed documents printed in the report
    show_batches: bool = False  # show how Dataset, random_split and DataLoader serve the token file
    block_size: int = 32  # context length of the windows shown by --show_batches
    batch_size: int = 4  # windows per batch shown by --show_batches


TINY_SHAKESPEARE = {
    "url": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    "sha256": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    "mirror": "tinyshakespeare/input.txt",
    "clean": False,  # already clean (65 symbols, no markup); cleansing would shift the well-known token counts
}
DATASETS = {
    "shakespeare_char": {**TINY_SHAKESPEARE, "tokenizer": "char"},
    "shakespeare": {**TINY_SHAKESPEARE, "tokenizer": "gpt2"},
    "lyrics": {
        "mirror": "poetry_lyrics",
        "file_name_is": "author",  # one file per artist
        "how_to_get": "download the Kaggle 'Poetry' dataset (https://www.kaggle.com/datasets/paultimothymooney/poetry),"
        " unzip it, and pass its folder of .txt files with --input",
    },
    "poems": {
        "mirror": "poems/poetryfoundation_poems_by_author.json",
        "how_to_get": "download the Kaggle 'Poetry Foundation Poems' CSV"
        " (https://www.kaggle.com/datasets/tgdivy/poetry-foundation-poems) and pass it with --input",
    },
    "custom": {"how_to_get": "pass a .txt, .json, .jsonl or .csv file, or a folder of them, with --input"},
}
TEXT_FIELDS = ("text", "poem", "lyrics", "content", "body", "verse", "song", "story")
META_FIELDS = {"author": ("author", "poet", "artist", "writer"), "title": ("title", "name"), "tags": ("tags", "tag")}
READABLE = (".txt", ".json", ".jsonl", ".csv")
CLEANSING_RULES = (
    "nfc_changed_documents", "crlf_to_lf", "control_chars_removed", "special_chars_removed", "trailing_spaces_trimmed",
    "leading_spaces_trimmed", "repeated_spaces_collapsed", "blank_line_runs_collapsed", "edge_blank_lines_trimmed",
    "empty_documents_dropped", "short_documents_dropped", "exact_duplicates_dropped", "normalised_duplicates_dropped",
)
GPT2_FILES_SHA256 = {  # OpenAI's GPT-2 tokenizer files, as tiktoken checks them
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
EOT = "<|endoftext|>"
# GPT-2's pre-tokenizer (encoder.py of openai/gpt-2): contractions, letters, digits, other symbols, whitespace.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
STOPWORDS = set(
    "a an the and or but if of at by for with about to from in into on onto off over under up down out is am are was"
    " were be been being have has had do does did i me my mine we us our you your yours he him his she her hers it"
    " its they them their this that these those there here what which who whom when where why how all any both each"
    " no nor not only own so than too very can will just s t don now o oh thee thou thy thine as let shall would"
    " should could may might must then upon yet ll m re ve d i'm i'll i've i'd it's don't can't that's you're"
    " ain't won't".split()
)


# ----------------------------------------------------------------------------------------------------------------------
# Finding the raw text: --input, then the local data folder, then a download (checked by sha256, cached).


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url, sha256, target):
    """Fetch url into target once, with a progress bar; every later run reuses the file after checking its hash."""
    target = Path(target)
    if target.exists() and sha256_of(target) == sha256:
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # e.g. --cache_dir names a file
        raise SystemExit(f"error: cannot create the download folder {target.parent} ({error.strerror}); point "
                         f"--cache_dir at a folder you can write to") from None
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(partial, "wb") as file:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=f"downloading {target.name}") as bar:
                for block in iter(lambda: response.read(1 << 16), b""):
                    file.write(block)
                    bar.update(len(block))
    except Exception as error:  # no network, DNS failure, HTTP error, refused connection: one answer for all
        partial.unlink(missing_ok=True)
        raise SystemExit(
            f"error: could not download {url} ({error}); download it yourself and pass it with --input PATH, "
            f"or set NANOVERSE_DATA to a folder that holds it"
        ) from None
    if sha256_of(partial) != sha256:
        partial.unlink()
        raise SystemExit(f"error: the file downloaded from {url} is not the expected one (sha256 mismatch); "
                         f"try again later or pass your own copy with --input PATH")
    os.replace(partial, target)  # a finished, verified file only ever appears under its final name
    return target


def locate_input(config):
    """Return (path, source) for the configured dataset without downloading when a local copy exists."""
    spec = DATASETS[config.dataset]
    if config.input:
        path = Path(config.input).expanduser()
        if not path.exists():
            raise SystemExit(f"error: --input {config.input} does not exist; pass an existing file or folder")
        return path, str(path)
    if config.data_dir and not Path(config.data_dir).is_dir():
        raise SystemExit(f"error: --data_dir {config.data_dir} is not a folder; name the folder that holds the data "
                         f"(laid out like the mirror), or leave it out")
    data_dir = config.data_dir or os.environ.get("NANOVERSE_DATA", "")
    if data_dir and "mirror" in spec and (Path(data_dir) / spec["mirror"]).exists():
        path = Path(data_dir) / spec["mirror"]
        return path, str(path)
    if "url" in spec:  # cached at data/tinyshakespeare/input.txt, where bpe.py and embeddings_pca.py look too
        return download(spec["url"], spec["sha256"], Path(config.cache_dir) / spec["mirror"]), spec["url"]
    raise SystemExit(f"error: the {config.dataset} dataset has no local copy here and no stable download address; "
                     f"{spec['how_to_get']}")


# ----------------------------------------------------------------------------------------------------------------------
# Reading: every format becomes a list of documents, each a dict with "text" and whatever metadata came with it.


def decode_bytes(raw, encoding, name):
    """Decode, replacing undecodable bytes with U+FFFD, and warn once per file with the count of bytes replaced."""
    replaced = 0

    def count_and_replace(error):
        nonlocal replaced
        replaced += error.end - error.start
        return "\ufffd", error.end

    codecs.register_error("prepare_data.count", count_and_replace)
    try:
        # Windows editors and Excel start UTF-8 files with a byte order mark; utf-8-sig drops it, so that it does not
        # stick to a CSV file's first column name or make a JSON file invalid.
        codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
        text = raw.decode(codec, errors="prepare_data.count")
    except LookupError:
        raise SystemExit(f"error: unknown --encoding {encoding!r}; use a Python codec name such as utf-8 "
                         f"or latin-1") from None
    # Small token ids (a train.bin) are valid UTF-8 bytes, so a token file decodes without a warning; but in text
    # NUL is at most a stray byte (cleansing removes it), never one character in a hundred.
    if text.count("\x00") > max(1, len(text) // 100):
        raise SystemExit(f"error: {name} is full of NUL bytes, so it is binary (a token file?), not text; pass the "
                         f"text file it was made from (or --encoding utf-16 if it is UTF-16 text)")
    if replaced:
        print(f"warning: {name} is not valid {encoding}: {replaced} bytes were replaced by U+FFFD "
              f"(pass --encoding if you know the file's encoding, e.g. --encoding latin-1)", file=sys.stderr)
    return text


def pick_field(keys, wanted, names):
    """The key that `wanted` names, else the first key whose lower-cased name is in `names`."""
    lowered = {key.lower(): key for key in keys if isinstance(key, str)}
    if wanted:
        return lowered.get(wanted.lower())
    return next((lowered[name] for name in names if name in lowered), None)


def documents_from_records(records, name, text_field):
    """Turn a list of dicts (JSON objects, CSV rows) into documents, keeping author/title/tags when present."""
    keys = list(dict.fromkeys(key for record in records[:1000] for key in record))
    field = pick_field(keys, text_field, TEXT_FIELDS)
    if field is None and not text_field:  # no familiar name: take the field that holds the longest strings
        lengths = Counter()
        for record in records[:1000]:
            for key, value in record.items():
                if isinstance(value, str):
                    lengths[key] += len(value)
        field = lengths.most_common(1)[0][0] if lengths else None
    if field is None and text_field:
        raise SystemExit(f"error: --text_field {text_field} is not a field of {name} (fields: "
                         f"{', '.join(map(str, keys))}); name one of those")
    if field is None:
        raise SystemExit(f"error: no text field found in {name} (fields: {', '.join(map(str, keys))}); "
                         f"name the one that holds the text with --text_field")
    meta_keys = {meta: pick_field(keys, "", names) for meta, names in META_FIELDS.items()}
    documents = []
    for record in records:
        document = {"text": record.get(field)}
        for meta, key in meta_keys.items():
            value = record.get(key) if key is not None and key != field else None
            if isinstance(value, str):  # scraped titles and names carry stray line breaks and spaces
                value = " ".join(value.split())
            if value not in (None, ""):
                document[meta] = value
        documents.append(document)
    return documents


def read_json(text, name, text_field):
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise SystemExit(f"error: {name} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); "
                         f"fix the file or convert it to JSON Lines or CSV") from None
    if isinstance(data, dict) and all(isinstance(value, dict) for value in data.values()):  # {author: {title: poem}}
        return [{"text": poem, "author": author, "title": title}
                for author, poems in data.items() for title, poem in poems.items()]
    if isinstance(data, dict) and all(isinstance(value, (str, type(None))) for value in data.values()):  # {title: text}
        return [{"text": poem, "title": title} for title, poem in data.items()]
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):  # {"poems": [...]}
        data = next(iter(data.values()))
    if isinstance(data, list) and all(isinstance(item, (str, type(None))) for item in data):
        return [{"text": item} for item in data]
    if isinstance(data, list) and all(isinstance(item, dict) for item in data):
        return documents_from_records(data, name, text_field)
    raise SystemExit(f"error: {name} is JSON of a shape this script does not know; use a list of objects "
                     f'like {{"poem": ..., "author": ...}}, or {{author: {{title: poem}}}}')


def read_jsonl(text, name, text_field):
    records = []
    # Split on "\n" only: str.splitlines() also breaks at U+2028, U+0085 and form feeds, which JSON strings may hold.
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise SystemExit(f"error: line {line_number} of {name} is not valid JSON ({error.msg}); "
                             f"fix or delete that line") from None
        records.append(record if isinstance(record, dict) else {"text": record})
    return documents_from_records(records, name, text_field)


def read_csv(text, name, text_field):
    csv.field_size_limit(1 << 30)  # whole poems and songs live in one cell
    # newline="": the csv module finds the row ends itself (str.splitlines() would also break at U+2028 or U+0085).
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)  # strict: a stray quote is an error
    try:
        records = [dict(row) for row in reader]
    except csv.Error as error:  # line_num counts the lines read before the one that failed
        raise SystemExit(f"error: {name} is not readable as CSV (line {reader.line_num + 1}: {error}); "
                         f"fix the file or save it as CSV again") from None
    if not records:
        raise SystemExit(f"error: {name} has no rows under its header; check that it is a CSV file with a text column")
    return documents_from_records(records, name, text_field)


def read_documents(path, config):
    """Read a file or a folder (recursively) into (documents, sha256 of the input)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in READABLE)
        if not files:
            raise SystemExit(f"error: {path} holds no {', '.join(READABLE)} files; point --input at your text files")
    else:
        files = [path]
    readers = {".json": read_json, ".jsonl": read_jsonl, ".csv": read_csv}
    documents, listing = [], []
    for file in files:
        name = file.relative_to(path).as_posix() if path.is_dir() else file.name
        try:
            raw = file.read_bytes()
        except OSError as error:  # no permission, a broken link, a file that vanished
            raise SystemExit(f"error: cannot read {file} ({error.strerror}); check the path and its permissions") \
                from None
        listing.append(f"{hashlib.sha256(raw).hexdigest()}  {name}\n")
        text = decode_bytes(raw, config.encoding, file)
        if file.suffix.lower() in readers:
            found = readers[file.suffix.lower()](text, file, config.text_field)
        else:  # plain text: the whole file is one document, named after the file when it comes from a folder
            found = [{"text": text}]
            if path.is_dir():
                found[0][DATASETS[config.dataset].get("file_name_is", "title")] = file.stem
        documents.extend({**document, "source": name} for document in found)
    # A file's hash is its usual sha256; a folder's is the sha256 of its `sha256sum`-style listing.
    if path.is_dir():
        return documents, hashlib.sha256("".join(listing).encode()).hexdigest()
    return documents, listing[0].split()[0]


# ----------------------------------------------------------------------------------------------------------------------
# Cleansing: each rule rewrites the text and adds how often it fired to the report.


def clean_text(text, config, report):
    """Apply the cleansing rules to one document. Line breaks and ordinary punctuation are kept on purpose:
    a poem's or song's form lives in its lines and stanzas."""

    def apply(rule, pattern, replacement, text):
        text, count = re.subn(pattern, replacement, text)
        report[rule] += count
        return text

    # NFC: one code point for "e + combining accent", so the same word is always the same characters (UAX #15).
    normalised = unicodedata.normalize("NFC", text)
    report["nfc_changed_documents"] += normalised != text
    text = apply("crlf_to_lf", r"\r\n?", "\n", normalised)  # Windows and old Mac line endings
    text = apply("control_chars_removed", r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff]", "", text)  # keeps \t and \n
    if config.remove_chars:
        text = apply("special_chars_removed", "[" + re.escape(config.remove_chars) + "]", "", text)
    text = apply("trailing_spaces_trimmed", r"[ \t]+(?=\n|$)", "", text)
    if not config.keep_indentation:
        text = apply("leading_spaces_trimmed", r"(?m)^[ \t]+", "", text)
    text = apply("repeated_spaces_collapsed", r"(?<=\S)[ \t]{2,}", " ", text)  # inside a line; indentation stays
    text = apply("blank_line_runs_collapsed", r"\n{4,}", "\n\n\n", text)  # 3+ blank lines become 2
    stripped = text.strip("\n")
    report["edge_blank_lines_trimmed"] += stripped != text
    return stripped


def cleanse(documents, config):
    """Clean every document, then drop empty, too short, and duplicate ones. Returns (documents, report)."""
    report = Counter({rule: 0 for rule in CLEANSING_RULES})
    kept, seen_exact, seen_folded = [], set(), set()
    for document in documents:
        text = document["text"]
        if not isinstance(text, str):  # a null or a number where a poem should be
            text = "" if text is None else str(text)
        if config.clean:
            text = clean_text(text, config, report)
            if not text.strip():
                report["empty_documents_dropped"] += 1
                continue
            if len(text) < config.min_chars:
                report["short_documents_dropped"] += 1
                continue
            # Duplicates leak from training into validation and inflate its score; compare exact text first,
            # then with case and whitespace folded ("Hello  World" == "hello world").
            folded = " ".join(text.casefold().split())
            if text in seen_exact:
                report["exact_duplicates_dropped"] += 1
                continue
            if folded in seen_folded:
                report["normalised_duplicates_dropped"] += 1
                continue
            seen_exact.add(text)
            seen_folded.add(folded)
        elif not text:
            report["empty_documents_dropped"] += 1
            continue
        kept.append({**document, "text": text})
    if not kept:
        raise SystemExit("error: nothing is left after cleansing (every document was empty, shorter than --min_chars "
                         "or a duplicate); check the input, or lower --min_chars")
    report["documents_in"] = len(documents)
    report["documents_kept"] = len(kept)
    return kept, dict(report)


# ----------------------------------------------------------------------------------------------------------------------
# Exploratory report: what is in the corpus, in numbers (eda.json), one picture (eda.png), and a terminal summary.


def percentiles(values):
    values = np.asarray(values, dtype=np.float64)
    points = np.percentile(values, [0, 5, 25, 50, 75, 95, 100])
    summary = dict(zip(["min", "p5", "p25", "p50", "p75", "p95", "max"], points.round(1).tolist()))
    summary["mean"] = round(float(values.mean()), 1)
    return summary


def explore(documents, seed, samples):
    word_pattern = regex.compile(r"\p{L}+(?:'\p{L}+)*")  # words are letters, with inner apostrophes (o'er, don't)
    words = Counter()
    words_per_document, chars_per_document, lines_per_document, chars_per_line = [], [], [], []
    characters = Counter()
    for document in documents:
        text = document["text"]
        document_words = word_pattern.findall(text.lower())
        words.update(document_words)
        characters.update(text)
        lines = text.splitlines()
        words_per_document.append(len(document_words))
        chars_per_document.append(len(text))
        lines_per_document.append(len(lines))
        chars_per_line.extend(len(line) for line in lines if line.strip())
    total_chars = sum(characters.values())
    non_ascii = {char: count for char, count in characters.items() if ord(char) > 127}
    authors = Counter(document["author"] for document in documents if document.get("author"))
    picks = random.Random(seed).sample(range(len(documents)), min(samples, len(documents)))
    counts, edges = np.histogram(words_per_document, bins=np.geomspace(1, max(words_per_document) + 2, 30))
    histogram = {"bin_edges": edges.round(1).tolist(), "documents": counts.tolist()}
    return {
        "documents": len(documents),
        "lines": sum(lines_per_document),
        "words": sum(words.values()),
        "characters": total_chars,
        "words_per_document": percentiles(words_per_document),
        "characters_per_document": percentiles(chars_per_document),
        "lines_per_document": percentiles(lines_per_document),
        "characters_per_line": percentiles(chars_per_line or [0]),
        "word_vocabulary": len(words),
        "top_words": words.most_common(25),
        "top_words_without_stopwords": [(w, n) for w, n in words.most_common() if w not in STOPWORDS][:25],
        "character_vocabulary": len(characters),
        "non_ascii_share": round(sum(non_ascii.values()) / max(total_chars, 1), 6),
        "top_non_ascii_characters": Counter(non_ascii).most_common(20),
        "authors": len(authors),
        "documents_per_author": authors.most_common(20),
        "samples": [documents[i]["text"][:400] for i in picks],
        "histogram_words_per_document": histogram,
    }


def plot_eda(eda, documents, path):
    """Four panels: document lengths, line lengths, frequent content words, documents per author (or characters)."""
    import matplotlib

    matplotlib.use("Agg")  # draw to a file; no window needed
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(12, 8))
    if len(documents) > 1:
        lengths, unit = [len(document["text"].split()) for document in documents], "document"
    else:  # one running text: its paragraphs (speeches, stanzas) are the units worth a histogram
        lengths, unit = [len(block.split()) for block in re.split(r"\n\s*\n", documents[0]["text"])], "paragraph"
    # Lengths of texts are skewed (many short poems, a few epics): logarithmic bins show both ends.
    axes[0, 0].hist(lengths, bins=np.geomspace(1, max(lengths) + 2, 30), color="tab:blue")
    axes[0, 0].set(title=f"words per {unit}", xlabel="words (log scale)", ylabel=f"{unit}s", xscale="log")
    line_lengths = [len(line) for document in documents for line in document["text"].split("\n") if line.strip()]
    axes[0, 1].hist(line_lengths, bins=range(0, min(max(line_lengths, default=1), 200) + 2, 2), color="tab:green")
    axes[0, 1].set(title="characters per non-empty line", xlabel="characters", ylabel="lines")
    top = eda["top_words_without_stopwords"][:20][::-1]
    axes[1, 0].barh([word for word, _ in top], [count for _, count in top], color="tab:orange")
    axes[1, 0].set(title="most frequent words (stopwords removed)", xlabel="count")
    if eda["documents_per_author"]:
        top = eda["documents_per_author"][:20][::-1]
        axes[1, 1].barh([str(author)[:24] for author, _ in top], [count for _, count in top], color="tab:purple")
        axes[1, 1].set(title="documents per author (top 20)", xlabel="documents")
    else:
        counts = Counter(char for document in documents for char in document["text"] if not char.isspace())
        top = counts.most_common(30)
        axes[1, 1].bar([char for char, _ in top], [count for _, count in top], color="tab:purple")
        axes[1, 1].set(title="most frequent characters", ylabel="count")
    documents_label = "1 document" if eda["documents"] == 1 else f"{eda['documents']:,} documents"
    figure.suptitle(f"{documents_label}, {eda['words']:,} words, {eda['characters']:,} characters")
    figure.tight_layout()
    temporary = path.with_name(path.stem + ".tmp.png")
    figure.savefig(temporary, dpi=80)
    plt.close(figure)
    os.replace(temporary, path)


def print_summary(eda, report, clean):
    print(f"documents {eda['documents']:,} | lines {eda['lines']:,} | words {eda['words']:,} | "
          f"characters {eda['characters']:,} | word vocabulary {eda['word_vocabulary']:,} | "
          f"character vocabulary {eda['character_vocabulary']:,} | non-ASCII {eda['non_ascii_share']:.2%}")
    words = eda["words_per_document"]
    if eda["documents"] > 1:  # (one text has no spread of lengths to show)
        print(f"words per document: median {words['p50']:,.0f}, 5%-95% {words['p5']:,.0f}-{words['p95']:,.0f}, "
              f"max {words['max']:,.0f}")
    print("top words without stopwords: " + ", ".join(w for w, _ in eda["top_words_without_stopwords"][:12]))
    if eda["documents_per_author"]:
        print(f"{eda['authors']} authors; most documents: "
              + ", ".join(f"{author} ({count})" for author, count in eda["documents_per_author"][:5]))
    fired = {rule: count for rule, count in report.items() if count and not rule.startswith("documents_")}
    if not clean:
        print("cleansing: off (the text is used exactly as published; --clean turns it on)")
    else:
        print("cleansing: " + (", ".join(f"{rule} {count:,}" for rule, count in fired.items()) or "nothing to change"))
    for number, sample in enumerate(eda["samples"], start=1):
        print(f"--- sample {number} ---\n{sample[:300]}")


# ----------------------------------------------------------------------------------------------------------------------
# Tokenizers. Each returns (encode_document, decode, vocab_size, eot_id, extra meta fields, save: writes its files).


def gpt2_encoding(data_dir="", cache_dir="data"):
    """tiktoken's GPT-2 encoding; built from local encoder.json and vocab.bpe when the data folder or the download
    cache (where bpe.py keeps them) has them (no network needed), else fetched and cached by tiktoken itself."""
    import tiktoken

    local = data_dir or os.environ.get("NANOVERSE_DATA", "")
    folders = ([Path(local) / "gpt2"] if local else []) + [Path(cache_dir) / "gpt2"]
    folder = next((f for f in folders if (f / "encoder.json").is_file() and (f / "vocab.bpe").is_file()), None)
    if folder is not None:
        for name, expected in GPT2_FILES_SHA256.items():
            if sha256_of(folder / name) != expected:
                raise SystemExit(f"error: {folder / name} is not GPT-2's {name} (sha256 mismatch); replace it with "
                                 f"the original file or remove the gpt2 folder to let tiktoken download it")
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks

        ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(folder / "vocab.bpe"),
                                                encoder_json_file=str(folder / "encoder.json"))
        return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                 special_tokens={EOT: 50256})
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as error:
        raise SystemExit(f"error: could not load the GPT-2 tokenizer ({error}); connect to the internet once, or put "
                         f"encoder.json and vocab.bpe in {folders[-1]} (or in gpt2/ of --data_dir)") from None


def build_tokenizer(config, train_documents, all_text):
    if config.tokenizer == "char":
        # The vocabulary is every character of the whole corpus, sorted, as in nanoGPT's shakespeare_char:
        # a character seen only in validation still gets an id.
        itos = sorted(set(all_text))
        stoi = {char: index for index, char in enumerate(itos)}
        return (lambda text: [stoi[char] for char in text], lambda ids: "".join(itos[i] for i in ids),
                len(itos), None, {"itos": itos}, lambda out_dir: None)
    if config.tokenizer == "gpt2":
        encoding = gpt2_encoding(config.data_dir, config.cache_dir)
        # encode_ordinary: a literal "<|endoftext|>" typed inside a poem is text, not the separator
        return encoding.encode_ordinary, encoding.decode, encoding.n_vocab, encoding.eot_token, {}, lambda out_dir: None
    import bpe  # only this tokenizer needs bpe.py

    # Train on the training split only: merges learned from validation text would leak it into the model.
    try:
        tokenizer = bpe.Tokenizer.train("\n\n".join(train_documents), config.vocab_size, pattern="gpt2",
                                        special_tokens=(EOT,))
    except ValueError as error:  # e.g. a training split with no text in it
        raise SystemExit(f"error: cannot train the BPE tokenizer on the training split ({error}); give more text "
                         f"or a smaller --val_fraction") from None

    def save(out_dir):
        tokenizer.save(str(out_dir / "bpe.partial"))  # writes bpe.partial.model (+ .vocab), renamed when complete
        for suffix in (".model", ".vocab"):
            if (out_dir / f"bpe.partial{suffix}").exists():
                os.replace(out_dir / f"bpe.partial{suffix}", out_dir / f"bpe{suffix}")

    return (tokenizer.encode_ordinary, tokenizer.decode, tokenizer.vocab_size,
            tokenizer.special_tokens[EOT], {"bpe_model": "bpe.model"}, save)


def split_documents(texts, config):
    """Return (train_texts, val_texts). `contiguous`: one cut in the running text at 1 - val_fraction, as nanoGPT
    does for Tiny Shakespeare. `doc`: a seeded shuffle of whole documents, so no document straddles the split."""
    if config.split == "contiguous":
        # The running text is the documents joined by blank lines (cleansed.txt). Documents before the cut go to
        # training, the one it falls in is cut in two, the rest go to validation: each stays a document of its own,
        # so <|endoftext|> still separates them. A single text is simply cut in two.
        cut = int((sum(len(text) for text in texts) + 2 * (len(texts) - 1)) * (1 - config.val_fraction))
        train_texts, val_texts, start = [], [], 0
        for text in texts:
            if start + len(text) <= cut:
                train_texts.append(text)
            elif start >= cut:
                val_texts.append(text)
            else:
                train_texts.append(text[:cut - start])
                val_texts.append(text[cut - start:])
            start += len(text) + 2  # the blank line "\n\n" after it
        return train_texts, val_texts
    if len(texts) < 2:
        raise SystemExit("error: --split doc needs at least 2 documents and this corpus has 1; use --split contiguous")
    order = list(range(len(texts)))
    random.Random(config.seed).shuffle(order)
    n_val = min(max(1, round(len(texts) * config.val_fraction)), len(texts) - 1)
    if abs(n_val / len(texts) - config.val_fraction) > 0.05:  # few documents: whole ones cannot hit the share
        print(f"note: {n_val} of {len(texts)} documents go to validation ({n_val / len(texts):.0%}, not the "
              f"{config.val_fraction:.0%} of --val_fraction): with so few documents, consider --split contiguous")
    return [texts[i] for i in sorted(order[n_val:])], [texts[i] for i in sorted(order[:n_val])]


def encode_documents(texts, encode, eot_id):
    """Token ids of the documents in order, <|endoftext|> between them (a blank line for char, which has none)."""
    if eot_id is None:
        return encode("\n\n".join(texts))
    ids = []
    for index, text in enumerate(texts):
        if index:
            ids.append(eot_id)
        ids.extend(encode(text))
    return ids


def write_atomic(path, data):
    """Write to a temporary file beside `path`, then rename: a crash leaves the old file or the new, never half."""
    temporary = path.with_name(path.name + ".tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except BaseException:  # a full disk, a Ctrl-C: keep the old file and leave no fragment behind
        temporary.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------------------------------
# The PyTorch side: a Dataset of (input, target) windows over the token file, split and batched.


class TokenWindows(Dataset):
    """Item i is tokens[i : i+block_size] as input and the same window moved one step right as target: at every
    position the model predicts the next token. np.memmap reads from disk only the windows asked for."""

    def __init__(self, path, dtype, block_size):
        self.tokens = np.memmap(path, dtype=dtype, mode="r")
        self.block_size = block_size

    def __len__(self):
        return max(0, len(self.tokens) - self.block_size)

    def __getitem__(self, index):
        window = torch.from_numpy(self.tokens[index : index + self.block_size + 1].astype(np.int64))
        return window[:-1], window[1:]


def show_batches(out_dir, meta, decode, config):
    train = TokenWindows(out_dir / "train.bin", meta["dtype"], config.block_size)
    val = TokenWindows(out_dir / "val.bin", meta["dtype"], config.block_size)
    if len(train) < 2 or len(val) < 1:
        raise SystemExit(f"error: the token files are shorter than --block_size {config.block_size}; "
                         f"use a smaller --block_size to show batches")
    generator = torch.Generator().manual_seed(config.seed)
    # random_split draws random windows; fine for a quick held-out check, but neighbouring windows overlap, so the
    # honest validation set is val.bin, separated from training by whole documents before tokenizing.
    n_check = max(1, len(train) // 100)
    train_part, check_part = random_split(train, [len(train) - n_check, n_check], generator=generator)
    # RandomSampler: a fresh random order every epoch (training); SequentialSampler: always the same order (evaluation).
    train_loader = DataLoader(train_part, batch_size=config.batch_size,
                              sampler=RandomSampler(train_part, generator=generator))
    val_loader = DataLoader(val, batch_size=config.batch_size, sampler=SequentialSampler(val))
    print(f"train windows {len(train_part):,} | random_split check windows {len(check_part):,} | "
          f"val windows {len(val):,} | {len(train_loader):,} training batches of {config.batch_size}")
    for name, loader in (("train (RandomSampler)", train_loader), ("val (SequentialSampler)", val_loader)):
        inputs, targets = next(iter(loader))
        print(f"{name}: inputs {tuple(inputs.shape)} {inputs.dtype}, targets {tuple(targets.shape)}")
        print(f"  x[0] ids {inputs[0, :12].tolist()} ...\n  y[0] ids {targets[0, :12].tolist()} ...")
        print(f"  x[0] text {decode(inputs[0].tolist())!r}\n  y[0] text {decode(targets[0].tolist())!r}")
    return inputs, targets


# ----------------------------------------------------------------------------------------------------------------------
# The whole pipeline.


def resolve_defaults(config):
    if config.dataset not in DATASETS:
        raise SystemExit(f"error: unknown dataset {config.dataset!r}; choose one of {', '.join(DATASETS)}")
    if config.dataset == "custom" and not config.input:
        raise SystemExit("error: the custom dataset needs --input PATH (a file or a folder of text files)")
    spec = DATASETS[config.dataset]
    if config.tokenizer == "":
        config.tokenizer = spec.get("tokenizer", "gpt2")
    if config.clean is None:
        config.clean = spec.get("clean", True)
    config.out_dir = config.out_dir or str(Path("data") / config.dataset)
    checks = [
        (config.tokenizer in ("char", "gpt2", "bpe"),
         f"--tokenizer must be char, gpt2 or bpe, not {config.tokenizer!r}"),
        (config.split in ("", "doc", "contiguous"), f"--split must be doc or contiguous, not {config.split!r}"),
        (0 < config.val_fraction < 1, f"--val_fraction must be between 0 and 1, not {config.val_fraction}"),
        (config.dtype in ("auto", "uint16", "uint32"), f"--dtype must be auto, uint16 or uint32, not {config.dtype!r}"),
        (config.vocab_size >= 257 or config.tokenizer != "bpe",
         "--vocab_size for bpe must be at least 257 (256 byte tokens + <|endoftext|>)"),
        (config.vocab_size <= 1 << 16 or config.tokenizer != "bpe" or config.dtype != "uint16",
         f"--vocab_size {config.vocab_size:,} does not fit in uint16; use --dtype uint32 (or auto)"),
        (config.samples >= 0, f"--samples must be 0 or more, not {config.samples}"),
        (config.block_size >= 1, f"--block_size must be at least 1 token, not {config.block_size}"),
        (config.batch_size >= 1, f"--batch_size must be at least 1 window, not {config.batch_size}"),
        (not Path(config.out_dir).is_file(),
         f"--out_dir {config.out_dir} is a file; name a folder (new or existing) for the output files"),
    ]
    for ok, message in checks:
        if not ok:
            raise SystemExit("error: " + message)
    return config


def prepare(config):
    """Read, cleanse, explore, tokenize, split and write; returns the meta dict written to meta.json."""
    config = resolve_defaults(replace(config))  # a copy: the caller's config keeps its blanks
    path, source = locate_input(config)
    documents, input_sha256 = read_documents(path, config)
    documents, report = cleanse(documents, config)
    texts = [document["text"] for document in documents]
    # Whatever can still go wrong with this corpus is found before the first file is written, so a run that fails
    # on it leaves the output folder as it was.
    config.split = config.split or ("contiguous" if len(texts) == 1 else "doc")
    train_texts, val_texts = split_documents(texts, config)
    eda = explore(documents, config.seed, config.samples)
    eda["cleansing"] = report
    print_summary(eda, report, config.clean)
    if config.eda:
        try:
            import matplotlib  # noqa: F401 (eda.png is drawn below; find out now that it cannot be)
        except ImportError:
            raise SystemExit("error: drawing eda.png needs matplotlib; pip install matplotlib, or pass --no-eda") \
                from None
    out_dir = Path(config.out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SystemExit(f"error: cannot create --out_dir {out_dir} ({error.strerror}); name a folder you can "
                         f"write to") from None
    encode, decode, vocab_size, eot_id, extra, save_tokenizer = build_tokenizer(config, train_texts,
                                                                                "\n\n".join(texts))
    dtype = config.dtype if config.dtype != "auto" else ("uint16" if vocab_size <= 1 << 16 else "uint32")
    if vocab_size > np.iinfo(dtype).max + 1:
        raise SystemExit(f"error: a vocabulary of {vocab_size:,} tokens does not fit in {dtype}; use --dtype uint32 "
                         f"(or auto)")

    # From here on files are replaced one by one. meta.json goes first and comes back last, so a run stopped in
    # between (Ctrl-C, a full disk) leaves a folder that every script refuses ("run prepare_data.py"), never new
    # token files described by an old meta.json.
    (out_dir / "meta.json").unlink(missing_ok=True)

    write_atomic(out_dir / "cleansed.txt", "\n\n".join(texts).encode())
    jsonl = "".join(json.dumps(document, ensure_ascii=False) + "\n" for document in documents)
    write_atomic(out_dir / "cleansed.jsonl", jsonl.encode())
    if config.eda:
        write_atomic(out_dir / "eda.json", json.dumps(eda, indent=1, ensure_ascii=False).encode())
        plot_eda(eda, documents, out_dir / "eda.png")
    counts = {}
    for name, part in (("train", train_texts), ("val", val_texts)):
        ids = np.array(encode_documents(part, encode, eot_id), dtype=dtype)
        write_atomic(out_dir / f"{name}.bin", ids.tobytes())
        counts[name] = len(ids)
    save_tokenizer(out_dir)
    meta = {
        "format": "nanoverse-tokens-v1",
        "dataset": config.dataset,
        "tokenizer": config.tokenizer,
        "vocab_size": vocab_size,
        "dtype": dtype,
        "train_tokens": counts["train"],
        "val_tokens": counts["val"],
        "eot_id": eot_id,
        **extra,
        "source": source,
        "sha256": input_sha256,
        "split": config.split,
        "val_fraction": config.val_fraction,
        "seed": config.seed,
        "documents": {"train": len(train_texts), "val": len(val_texts)} if config.split == "doc" else len(texts),
        "characters": eda["characters"],
        "clean": config.clean,
        "cleansing": report,
    }
    write_atomic(out_dir / "meta.json", json.dumps(meta, indent=1, ensure_ascii=False).encode())  # last: marks done
    print(f"{config.tokenizer} tokenizer, vocabulary {vocab_size:,}, {config.split} split: "
          f"train {counts['train']:,} tokens, val {counts['val']:,} tokens ({dtype}) -> {out_dir}")
    if config.show_batches:
        show_batches(out_dir, meta, decode, config)
    return meta


def main(argv=None):
    if argv is None:  # in a notebook sys.argv holds the kernel's own flags (-f kernel.json): run with defaults
        argv = [] if "ipykernel" in sys.modules else sys.argv[1:]
    try:  # help text comes from the comments beside the Config fields
        comments = dict(re.findall(r"^\s+(\w+): .*?  # (.+)$", inspect.getsource(Config), re.M))
    except (OSError, TypeError):  # source not available (e.g. a frozen app): flags still work, without help
        comments = {}
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],  # python -OO drops docstrings
                                     allow_abbrev=False)  # a misspelled flag is an error, never a guess
    for field in fields(Config):
        help_text = comments.get(field.name, "")
        if field.default not in ("", None) and "default" not in help_text:
            help_text += f" (default: {field.default})"
        help_text = help_text.replace("%", "%%")  # argparse formats help strings with %
        if field.name == "dataset":  # the one positional argument: python prepare_data.py poems
            parser.add_argument("dataset", nargs="?", default=field.default, choices=list(DATASETS), help=help_text)
        elif field.type is bool:
            parser.add_argument(f"--{field.name}", action=argparse.BooleanOptionalAction, default=field.default,
                                help=help_text)
        else:
            parser.add_argument(f"--{field.name}", type=field.type, default=field.default, help=help_text)
    args, unknown = parser.parse_known_args(argv)
    # A notebook kernel passes "-f kernel.json"; ignore exactly that, and name anything else.
    if "-f" in unknown[:-1]:
        del unknown[unknown.index("-f"):unknown.index("-f") + 2]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (see --help for the options)")
    return prepare(Config(**vars(args)))


# %% Run
if __name__ == "__main__":
    main()
