"""Prepare text for the models: cleanse it, explore it, tokenize it, split it, and write token files.

Every language model here trains on `train.bin` and `val.bin` (flat arrays of token ids, no header) described by
`meta.json`. This script makes them from raw creative text (plays, lyrics, poems, any text you bring) and shows the
steps that decide how good a small model can get: what to throw away (cleansing rules, each counted), what is in the
corpus (a report and a picture), how text becomes integers (characters, GPT-2's BPE, or a BPE trained with bpe.py),
and how validation stays honest (split by document: no poem half in training, half in validation). --show_batches
shows how PyTorch serves the token file to a model. It also fetches the Dakshina lexicons the seq2seq scripts read.
References: char-rnn and nanoGPT (the Tiny Shakespeare numbers), Radford et al. 2019 (GPT-2's tokenizer), Roark et al.
2020 (Dakshina), https://pytorch.org/docs/stable/data.html (Dataset and DataLoader).

Run:
    CPU:    python prepare_data.py shakespeare_char          # ~4 s, offline: 65 symbols, 1,003,854 / 111,540 tokens
            python prepare_data.py custom --input my_texts/ --tokenizer bpe --vocab_size 1024 --show_batches
            python prepare_data.py dakshina --lang hi         # downloads the 2 GB Dakshina archive once
    GPU:    the same commands; this script does not use the GPU
    Colab:  !python prepare_data.py shakespeare_char --show_batches
"""

import argparse
import csv
import difflib
import gzip
import hashlib
import html.parser
import inspect
import io
import json
import os
import random
import re
import sys
import tarfile
import time
import unicodedata
import urllib.parse
import urllib.request
import urllib.robotparser
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
    dataset: str = "shakespeare_char"  # shakespeare_char | shakespeare | lyrics | poems | custom | dakshina
    input: str = ""  # a file or folder to read instead of the dataset's own copy (dakshina: the archive or a folder)
    cache_dir: str = "data"  # downloads are kept here, laid out like the mirror
    text_field: str = ""  # the text column or key of JSON, JSON Lines or CSV (default: text, poem, lyrics or content)
    select: str = ""  # web pages: keep only the element with this id (#poem) or class (.poem-body)
    delay: float = 1.0  # .urls: at least this many seconds between two requests to one site
    lang: str = "hi"  # dakshina: the language (bn gu hi kn ml mr pa sd si ta te ur)
    clean: bool = None  # cleanse, then drop short and duplicate documents (default on; off for Tiny Shakespeare)
    remove_chars: str = "@~{}[]<>|^_*#`\\"  # characters deleted as markup debris (line breaks and punctuation stay)
    keep_indentation: bool = False  # keep the leading spaces of each line (some poems indent on purpose)
    min_chars: int = 20  # documents shorter than this after cleansing are dropped (not with --no-clean)
    tokenizer: str = ""  # char | gpt2 | bpe (default: the dataset's, gpt2 for the rest)
    vocab_size: int = 1024  # vocabulary size for --tokenizer bpe
    split: str = ""  # doc (seeded shuffle of documents) | contiguous (one cut); default: contiguous for a single text
    val_fraction: float = 0.1  # share of the corpus held out for validation
    seed: int = 1337  # seed of the document shuffle, the samples and the batches shown
    out_dir: str = ""  # where the files go (default: data/<dataset>, data/dakshina/<lang> for dakshina)
    eda: bool = True  # write the exploratory report eda.json and the picture eda.png
    samples: int = 3  # random cleansed documents printed in the report
    show_batches: bool = False  # show how Dataset, random_split and DataLoader serve the token file
    block_size: int = 32  # context length of the windows shown by --show_batches
    batch_size: int = 4  # windows per batch shown by --show_batches


CLEANSING_RULES = (
    "nfc_changed_documents", "crlf_to_lf", "control_chars_removed", "special_chars_removed", "trailing_spaces_trimmed",
    "leading_spaces_trimmed", "repeated_spaces_collapsed", "blank_line_runs_collapsed", "edge_blank_lines_trimmed",
    "empty_documents_dropped", "short_documents_dropped", "exact_duplicates_dropped", "normalised_duplicates_dropped")
EOT = "<|endoftext|>"
STOPWORDS = set(
    "a an the and or but if of at by for with about to from in into on onto off over under up down out is am are was"
    " were be been being have has had do does did i me my mine we us our you your yours he him his she her hers it its"
    " they them their this that these those there here what which who whom when where why how all any both each no"
    " nor not only own so than too very can will just s t don now o oh thee thou thy thine as let shall would should"
    " could may might must then upon yet ll m re ve d i'm i'll i've i'd it's don't can't that's you're ain't won't"
    .split())


# %% Cleansing: each rule rewrites the text and counts how often it fired


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
        text = "" if document["text"] is None else str(document["text"])  # a null or a number where a poem should be
        dropped = "empty_documents_dropped" if not text else None
        if config.clean:
            text = clean_text(text, config, report)
            # Duplicates leak from training into validation and inflate its score; compare exact text first,
            # then with case and whitespace folded ("Hello  World" == "hello world").
            folded = " ".join(text.casefold().split())
            dropped = ("empty_documents_dropped" if not text.strip() else
                       "short_documents_dropped" if len(text) < config.min_chars else
                       "exact_duplicates_dropped" if text in seen_exact else
                       "normalised_duplicates_dropped" if folded in seen_folded else None)
            seen_exact.add(text)
            seen_folded.add(folded)
        if dropped:
            report[dropped] += 1
        else:
            kept.append({**document, "text": text})
    if not kept:
        raise SystemExit("error: nothing is left after cleansing (every document was empty, shorter than --min_chars "
                         "or a duplicate); check the input, or lower --min_chars")
    report.update(documents_in=len(documents), documents_kept=len(kept))
    return kept, dict(report)


# %% Exploring: what is in the corpus, in numbers (eda.json) and one picture (eda.png)


def percentiles(values):
    points = np.percentile(np.asarray(values, dtype=np.float64), [0, 5, 25, 50, 75, 95, 100]).round(1).tolist()
    return {**dict(zip(["min", "p5", "p25", "p50", "p75", "p95", "max"], points)), "mean": round(np.mean(values), 1)}


def explore(documents, seed, samples):
    word_pattern = regex.compile(r"\p{L}+(?:'\p{L}+)*")  # words are letters, with inner apostrophes (o'er, don't)
    words, characters = Counter(), Counter()
    words_per_document, chars_per_document, line_counts, chars_per_line = [], [], [], []
    for document in documents:
        text, lines = document["text"], document["text"].splitlines()
        document_words = word_pattern.findall(text.lower())
        words.update(document_words)
        characters.update(text)
        words_per_document.append(len(document_words))
        chars_per_document.append(len(text))
        line_counts.append(len(lines))
        chars_per_line.extend(len(line) for line in lines if line.strip())
    total_chars, non_ascii = sum(characters.values()), Counter({c: n for c, n in characters.items() if ord(c) > 127})
    authors = Counter(document["author"] for document in documents if document.get("author"))
    picks = random.Random(seed).sample(range(len(documents)), min(samples, len(documents)))
    counts, edges = np.histogram(words_per_document, bins=np.geomspace(1, max(words_per_document) + 2, 30))
    return {"documents": len(documents), "lines": sum(line_counts), "words": sum(words.values()),
            "characters": total_chars, "word_vocabulary": len(words), "character_vocabulary": len(characters),
            "words_per_document": percentiles(words_per_document), "lines_per_document": percentiles(line_counts),
            "characters_per_document": percentiles(chars_per_document), "top_words": words.most_common(25),
            "characters_per_line": percentiles(chars_per_line or [0]),
            "top_words_without_stopwords": [(w, n) for w, n in words.most_common() if w not in STOPWORDS][:25],
            "non_ascii_share": round(sum(non_ascii.values()) / max(total_chars, 1), 6), "authors": len(authors),
            "top_non_ascii_characters": non_ascii.most_common(20), "documents_per_author": authors.most_common(20),
            "samples": [documents[i]["text"][:400] for i in picks],
            "histogram_words_per_document": {"bin_edges": edges.round(1).tolist(), "documents": counts.tolist()}}


def plot_eda(eda, documents, path):
    """Four panels: document lengths, line lengths, frequent content words, documents per author (or characters)."""
    import matplotlib.pyplot as plt  # drawn to a file and closed, so no window (and no notebook output) appears

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
    words, counts = zip(*eda["top_words_without_stopwords"][:20][::-1])
    axes[1, 0].barh(words, counts, color="tab:orange")
    axes[1, 0].set(title="most frequent words (stopwords removed)", xlabel="count")
    if eda["documents_per_author"]:
        authors, counts = zip(*eda["documents_per_author"][:20][::-1])
        axes[1, 1].barh([str(author)[:24] for author in authors], counts, color="tab:purple")
        axes[1, 1].set(title="documents per author (top 20)", xlabel="documents")
    else:
        characters, counts = zip(*Counter(c for d in documents for c in d["text"] if not c.isspace()).most_common(30))
        axes[1, 1].bar(characters, counts, color="tab:purple")
        axes[1, 1].set(title="most frequent characters", ylabel="count")
    figure.suptitle(f"{eda['documents']:,} document{'s' * (eda['documents'] > 1)}, {eda['words']:,} words, "
                    f"{eda['characters']:,} characters")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    write_atomic(path, buffer.getvalue())


def print_summary(eda, report, clean):
    words = eda["words_per_document"]
    fired = [f"{rule} {count:,}" for rule, count in report.items() if count and not rule.startswith("documents_")]
    print(" | ".join(f"{key.replace('_', ' ')} {eda[key]:,}" for key in ("documents", "lines", "words", "characters",
                     "word_vocabulary", "character_vocabulary")) + f" | non-ASCII {eda['non_ascii_share']:.2%}")
    if eda["documents"] > 1:  # (one text has no spread of lengths to show)
        print(f"words per document: median {words['p50']:,.0f}, 5%-95% {words['p5']:,.0f}-{words['p95']:,.0f}, "
              f"max {words['max']:,.0f}")
    print("top words without stopwords: " + ", ".join(w for w, _ in eda["top_words_without_stopwords"][:12]))
    if eda["documents_per_author"]:
        print(f"{eda['authors']} authors; most documents: "
              + ", ".join(f"{author} ({count})" for author, count in eda["documents_per_author"][:5]))
    print("cleansing: " + ((", ".join(fired) or "nothing to change") if clean else
                           "off (the text is used exactly as published; --clean turns it on)"))
    print("".join(f"--- sample {number} ---\n{sample[:300]}\n" for number, sample in enumerate(eda["samples"], 1)))


# %% Tokenizing: characters, GPT-2's BPE, or a BPE trained on this corpus


def build_tokenizer(config, train_texts, all_text):
    """(encode, decode, vocab_size, eot_id, save); save(out_dir) writes the tokenizer's files and returns its fields
    of meta.json. tokenizer_sha256 fingerprints the vocabulary: a model trained on these ids can refuse other ids."""
    if config.tokenizer == "char":
        # The vocabulary is every character of the whole corpus, sorted, as in nanoGPT's shakespeare_char:
        # a character seen only in validation still gets an id.
        itos = sorted(set(all_text))
        stoi = {char: index for index, char in enumerate(itos)}
        fingerprint = hashlib.sha256("".join(itos).encode()).hexdigest()
        return (lambda text: [stoi[char] for char in text], lambda ids: "".join(itos[i] for i in ids), len(itos),
                None, lambda out_dir: {"itos": itos, "tokenizer_sha256": fingerprint})
    if config.tokenizer == "gpt2":
        import tiktoken  # downloads GPT-2's two files once and caches them
        try:
            encoding = tiktoken.get_encoding("gpt2")
        except Exception as error:
            raise SystemExit(f"error: could not load GPT-2's tokenizer ({error}); connect to the internet once so "
                             f"that tiktoken can cache it") from None
        # encode_ordinary: a literal "<|endoftext|>" typed inside a poem is text, not the separator
        return (encoding.encode_ordinary, encoding.decode, encoding.n_vocab, encoding.eot_token,
                lambda out_dir: {"tokenizer_sha256": hashlib.sha256(b"gpt2").hexdigest()})
    import bpe  # only this tokenizer needs bpe.py
    # Train on the training split only: merges learned from validation text would leak it into the model.
    try:
        tokenizer = bpe.Tokenizer.train("\n\n".join(train_texts), config.vocab_size, special_tokens=(EOT,))
    except ValueError as error:  # e.g. a training split with no text in it
        raise SystemExit(f"error: cannot train the BPE tokenizer on the training split ({error}); give more text "
                         f"or a smaller --val_fraction") from None

    def save(out_dir):
        tokenizer.save(out_dir / "bpe")  # bpe.model (to load) and bpe.vocab (to read)
        return {"bpe_model": "bpe.model",
                "tokenizer_sha256": hashlib.sha256((out_dir / "bpe.model").read_bytes()).hexdigest()}

    return tokenizer.encode_ordinary, tokenizer.decode, tokenizer.vocab_size, tokenizer.special_tokens[EOT], save


def encode_documents(texts, encode, eot_id):
    """Token ids of the documents in order, <|endoftext|> between them (a blank line for char, which has none)."""
    if eot_id is None:
        return encode("\n\n".join(texts))
    return [token for index, text in enumerate(texts) for token in [eot_id] * (index > 0) + encode(text)]


# %% Splitting by document, and the whole pipeline


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


def prepare(config):
    """Read, cleanse, explore, tokenize, split and write; returns the meta dict written to meta.json."""
    config = check_config(replace(config))  # a copy: the caller's config keeps its blanks
    documents, source, input_sha256 = read_input(config)
    documents, report = cleanse(documents, config)
    texts = [document["text"] for document in documents]
    # Whatever can still go wrong with this corpus is found before the first file is written, so a run that fails
    # on it leaves the output folder as it was.
    config.split = config.split or ("contiguous" if len(texts) == 1 else "doc")
    train_texts, val_texts = split_documents(texts, config)
    eda = {**explore(documents, config.seed, config.samples), "cleansing": report}
    print_summary(eda, report, config.clean)
    encode, decode, vocab_size, eot_id, save_tokenizer = build_tokenizer(config, train_texts, "\n\n".join(texts))
    dtype = "uint16" if vocab_size <= 1 << 16 else "uint32"  # half the disk and memory when the ids fit
    out_dir = make_folder(config.out_dir)

    # From here on files are replaced one by one. meta.json goes first and comes back last, so a run stopped in
    # between (Ctrl-C, a full disk) leaves a folder that every script refuses ("run prepare_data.py"), never new
    # token files described by an old meta.json.
    (out_dir / "meta.json").unlink(missing_ok=True)
    write_atomic(out_dir / "cleansed.txt", "\n\n".join(texts).encode())
    write_atomic(out_dir / "cleansed.jsonl", "".join(json.dumps(document, ensure_ascii=False) + "\n"
                                                     for document in documents).encode())
    if config.eda:
        write_atomic(out_dir / "eda.json", json.dumps(eda, indent=1, ensure_ascii=False).encode())
        plot_eda(eda, documents, out_dir / "eda.png")
    counts = {}
    for name, part in (("train", train_texts), ("val", val_texts)):
        ids = np.array(encode_documents(part, encode, eot_id), dtype=dtype)
        write_atomic(out_dir / f"{name}.bin", ids.tobytes())
        counts[name] = len(ids)
    extra = save_tokenizer(out_dir)
    meta = {"format": "nanoverse-tokens-v1", "dataset": config.dataset, "tokenizer": config.tokenizer,
            "vocab_size": vocab_size, "dtype": dtype, "train_tokens": counts["train"], "val_tokens": counts["val"],
            "eot_id": eot_id, **extra, "source": source, "sha256": input_sha256, "split": config.split,
            "val_fraction": config.val_fraction, "seed": config.seed,
            "documents": {"train": len(train_texts), "val": len(val_texts)} if config.split == "doc" else len(texts),
            "characters": eda["characters"], "clean": config.clean, "cleansing": report}
    write_atomic(out_dir / "meta.json", json.dumps(meta, indent=1, ensure_ascii=False).encode())  # last: marks done
    print(f"{config.tokenizer} tokenizer, vocabulary {vocab_size:,}, {config.split} split: "
          f"train {counts['train']:,} tokens, val {counts['val']:,} tokens ({dtype}) -> {out_dir}")
    if config.show_batches:
        show_batches(out_dir, meta, decode, config)
    return meta


# %% Serving the token file to a model: Dataset, random_split, DataLoader and its samplers


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


# %% Plumbing: downloads, input formats, Dakshina, checks, command line (skip on a first read)

DATASETS = {
    "shakespeare_char": {"tokenizer": "char", "clean": False},  # used as published: the well-known token counts
    "shakespeare": {"tokenizer": "gpt2", "clean": False},
    "lyrics": {"mirror": "poetry_lyrics", "file_name_is": "author",  # one file per artist
               "how_to_get": "pass the unzipped folder of kaggle.com/datasets/paultimothymooney/poetry with --input"},
    "poems": {"mirror": "poems/poetryfoundation_poems_by_author.json",
              "how_to_get": "pass the CSV of kaggle.com/datasets/tgdivy/poetry-foundation-poems with --input"},
    "custom": {}, "dakshina": {}}
TEXT_FIELDS = ("text", "poem", "lyrics", "content")
META_FIELDS = {"author": ("author", "poet", "artist"), "title": ("title",), "tags": ("tags",)}
READABLE = (".txt", ".json", ".jsonl", ".csv", ".html", ".htm", ".urls")
USER_AGENT = "nanoverse-prepare_data/1.0 (a teaching script; one request per --delay seconds per site)"
# Tiny Shakespeare ships with the repository, gzip-compressed: char-rnn's text exactly as published (datasets/).
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()  # a notebook has no __file__
SHAKESPEARE = {"shipped": HERE / "datasets" / "tinyshakespeare.txt.gz", "cached": "tinyshakespeare/input.txt",
               "url": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
               "sha256": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"}


def write_atomic(path, data):
    """Write a new temporary file beside `path` ("x": never through a link planted there), then rename it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "xb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:  # a full disk, a Ctrl-C: keep the old file and leave no fragment behind
        temporary.unlink(missing_ok=True)
        raise


def make_folder(path):
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        return Path(path)
    except OSError as error:
        raise SystemExit(f"error: cannot create the folder {path} ({error.strerror}); name a writable one") from None


def download(url, target, sha256=None):
    """Fetch url into target: a progress bar, bytes counted and hashed, no .part file left after a failure."""
    partial = make_folder(Path(target).parent) / (Path(target).name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as file:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=f"downloading {Path(target).name}") as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    bar.update(file.write(block))
        # A connection that closes early ends the loop quietly: count the bytes, or a cut-off file would be kept.
        if size is not None and partial.stat().st_size != size:
            raise OSError(f"got {partial.stat().st_size:,} of {size:,} bytes")
        if sha256 and hashlib.sha256(partial.read_bytes()).hexdigest() != sha256:  # (small files only)
            raise OSError("the file is not the expected one (sha256 mismatch)")
        os.replace(partial, target)
    except BaseException as error:
        partial.unlink(missing_ok=True)
        if not isinstance(error, Exception):  # Ctrl-C: stop, with no fragment left behind
            raise
        raise SystemExit(f"error: could not download {url} ({error}); check the connection and run again, or "
                         f"download it yourself and pass it with --input (or set NANOVERSE_DATA)") from None
    return target


def tiny_shakespeare(cache_dir="data"):
    """Tiny Shakespeare: the shipped copy; for a script pasted alone, the checked cache or a download."""
    if SHAKESPEARE["shipped"].is_file():
        return gzip.decompress(SHAKESPEARE["shipped"].read_bytes()).decode()
    path = Path(cache_dir) / SHAKESPEARE["cached"]
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != SHAKESPEARE["sha256"]:
        download(SHAKESPEARE["url"], path, SHAKESPEARE["sha256"])
    return path.read_text(encoding="utf-8")


def read_input(config):
    """(documents, source, sha256): --input, else the shipped Tiny Shakespeare, else the local data folder."""
    if config.input:
        return read_documents(Path(config.input).expanduser(), config)
    if config.dataset in ("shakespeare", "shakespeare_char"):
        text = tiny_shakespeare(config.cache_dir)
        return [{"text": text}], "tinyshakespeare", hashlib.sha256(text.encode()).hexdigest()
    spec, folder = DATASETS[config.dataset], os.environ.get("NANOVERSE_DATA", "")  # the local data mirror
    if not folder or not (Path(folder) / spec["mirror"]).exists():
        raise SystemExit(f"error: the {config.dataset} dataset has no local copy here and no stable download "
                         f"address; {spec['how_to_get']}")
    return read_documents(Path(folder) / spec["mirror"], config)


def read_file(file, config):
    """One file's documents: a .txt file is one document; JSON, JSON Lines and CSV hold records with a text field."""
    # UTF-8, with a leading byte order mark dropped (Windows editors and Excel write one; it would stick to a CSV
    # file's first column name); bytes that do not decode become U+FFFD, with one warning per file that counts them.
    raw = file.read_bytes()
    text = raw.decode("utf-8-sig", errors="replace")
    replaced = text.count("\ufffd") - raw.decode("utf-8-sig", errors="ignore").count("\ufffd")
    if replaced:
        print(f"warning: {file} is not valid UTF-8: {replaced} characters were replaced by U+FFFD (convert it, "
              f"e.g. iconv -f latin1 -t utf-8 FILE > NEW)", file=sys.stderr)
    # Small token ids (a train.bin) are valid UTF-8 bytes, so a token file decodes without a warning; but in text
    # NUL is at most a stray byte (cleansing removes it), never one character in a hundred.
    if text.count("\x00") > max(1, len(text) // 100):
        raise SystemExit(f"error: {file} is full of NUL bytes, so it is binary (a token file?), not text; pass the "
                         f"text file it was made from")
    try:
        if (suffix := file.suffix.lower()) == ".json":
            data = json.loads(text)
        elif suffix == ".jsonl":  # one JSON value a line, read as one array so that an error names its line; split on
            # "\n" only: str.splitlines() also breaks at U+2028, U+0085 and form feeds, which JSON strings may hold
            data = [x if isinstance(x, dict) else {"text": x} for x in json.loads(
                "[" + ",\n".join(line.strip() or "null" for line in text.split("\n")) + "]") if x is not None]
        elif suffix == ".csv":
            csv.field_size_limit(1 << 30)  # whole poems and songs live in one cell
            # newline="": the csv module finds the row ends itself (str.splitlines() would also break at U+2028).
            reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)  # strict: a stray quote is an error
            data = [dict(row) for row in reader]
        elif suffix in (".html", ".htm", ".urls"):  # saved web pages, or a list of addresses to fetch
            return (fetch_pages(text, config) if suffix == ".urls" else [page_document(text, config.select)]), raw
        else:
            return [{"text": text}], raw
    except json.JSONDecodeError as error:
        raise SystemExit(f"error: {file} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); "
                         f"fix that line") from None
    except csv.Error as error:  # line_num counts the lines read before the one that failed
        raise SystemExit(f"error: {file} is not readable as CSV (line {reader.line_num + 1}: {error}); fix the file "
                         f"or save it as CSV again") from None
    if isinstance(data, dict) and all(isinstance(value, dict) for value in data.values()):  # {author: {title: poem}}
        return [{"text": poem, "author": author, "title": title}
                for author, poems in data.items() for title, poem in poems.items()], raw
    if isinstance(data, list) and all(isinstance(item, (str, type(None))) for item in data):
        return [{"text": item} for item in data], raw
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise SystemExit(f"error: {file} holds JSON of another shape; use a list of strings, a list of objects like "
                         f'{{"poem": ..., "author": ...}}, or {{author: {{title: poem}}}}')
    # Records (JSON objects, CSV rows): the text field by name, and the author, title and tags when present.
    keys = list(dict.fromkeys(key for record in data[:1000] for key in record))
    lowered = {key.lower(): key for key in keys if isinstance(key, str)}
    wanted = [config.text_field.lower()] if config.text_field else TEXT_FIELDS
    field = next((lowered[name] for name in wanted if name in lowered), None)
    if field is None:
        problem = f"--text_field {config.text_field} is not a field" if config.text_field else "no text field found"
        raise SystemExit(f"error: {problem} in {file} (fields: {', '.join(map(str, keys))}); name the one that holds "
                         f"the text with --text_field")
    meta_keys = {meta: next((lowered[n] for n in names if n in lowered), None) for meta, names in META_FIELDS.items()}
    documents = []
    for record in data:
        document = {"text": record.get(field)}
        for meta, key in meta_keys.items():
            value = record.get(key) if key not in (None, field) else None
            value = " ".join(value.split()) if isinstance(value, str) else value  # scraped names carry line breaks
            if value not in (None, ""):
                document[meta] = value
        documents.append(document)
    return documents, raw


def read_documents(path, config):
    """A file or a folder (recursively) -> (documents, source, sha256; a folder's is that of its sha256sum listing)."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in READABLE) if path.is_dir() \
        else [path]
    if not files:
        raise SystemExit(f"error: {path} holds no {', '.join(READABLE)} files; point --input at your text files")
    documents, listing = [], []
    for file in files:
        name = file.relative_to(path).as_posix() if path.is_dir() else file.name
        found, raw = read_file(file, config)
        listing.append(f"{hashlib.sha256(raw).hexdigest()}  {name}\n")
        if path.is_dir() and file.suffix.lower() == ".txt":  # a text file in a folder is named after the file
            found[0][DATASETS[config.dataset].get("file_name_is", "title")] = file.stem
        documents.extend({"source": name, **document} for document in found)  # a fetched page keeps its URL
    digest = hashlib.sha256("".join(listing).encode()).hexdigest() if path.is_dir() else listing[0].split()[0]
    return documents, str(path), digest


class PageText(html.parser.HTMLParser):
    """A web page's visible text with its line breaks, its <title> and <meta name="author">; with `select` ("#id" or
    ".class") only the text inside the first element that has it. html.parser decodes entities (&amp; -> &)."""
    BREAKS, SKIPPED = {"br", "div", "li", "tr", "h1", "h2", "h3", "h4"}, {"script", "style", "nav", "header", "footer"}

    def __init__(self, select):
        super().__init__(convert_charrefs=True)
        self.select, self.parts, self.title, self.author = select, [], "", None
        self.skipping, self.in_title, self.selected, self.depth = 0, False, None, 0  # selected: the chosen tag's name

    def handle_starttag(self, tag, attrs):
        attrs = {name: value or "" for name, value in attrs}
        self.author = self.author or (tag == "meta" and attrs.get("name", "").lower() == "author" and attrs.get(
            "content"))
        self.in_title, self.skipping = tag == "title", self.skipping + (tag in self.SKIPPED)
        if self.selected is None and self.select and self.select[1:] in attrs.get(
                "id" if self.select[0] == "#" else "class", "").split():
            self.selected = tag
        self.depth += tag == self.selected  # counts nested elements of the chosen one's name, to find where it ends
        self.parts.append("\n\n" if tag == "p" else "\n" if tag in self.BREAKS else "")

    def handle_endtag(self, tag):
        self.skipping -= tag in self.SKIPPED and self.skipping > 0
        self.depth -= tag == self.selected
        self.selected = "" if self.selected == tag and self.depth == 0 else self.selected  # closed: keep nothing more
        self.parts.append("\n\n" if tag == "p" else "\n" if tag in self.BREAKS - {"br"} else "")

    def handle_data(self, data):
        if self.in_title:
            self.title += data
        elif not self.skipping and (not self.select or (self.selected and self.depth > 0)):
            self.parts.append(re.sub(r"\s+", " ", data))  # in HTML a line break in the source is just a space


def page_document(text, select):
    """One page as one document: its visible text, one line per line break, and its title and author."""
    (page := PageText(select)).feed(text)
    body = re.sub(r"\n{3,}", "\n\n", re.sub(r" *\n *", "\n", "".join(page.parts))).strip()
    return {"text": body, "title": " ".join(page.title.split()), **({"author": page.author} if page.author else {})}


def fetch_pages(text, config):
    """The pages of a .urls file (an address a line, # comments), fetched politely: robots.txt obeyed, --delay seconds
    between requests to a site, a User-Agent naming this script, each page kept in out_dir/pages for the next run."""
    urls = [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]
    cache, robots, last, counts, documents = make_folder(Path(config.out_dir) / "pages"), {}, {}, Counter(), []
    opener = urllib.request.OpenerDirector()  # http(s) only: a redirect to another scheme finds no handler
    for handler in (urllib.request.ProxyHandler, urllib.request.HTTPHandler, urllib.request.HTTPSHandler,
                    urllib.request.HTTPRedirectHandler, urllib.request.HTTPDefaultErrorHandler,
                    urllib.request.HTTPErrorProcessor, urllib.request.UnknownHandler):
        opener.add_handler(handler())
    for url in tqdm(urls, desc="pages", unit="page"):
        parts, path = urllib.parse.urlsplit(url), cache / (hashlib.sha256(url.encode()).hexdigest()[:32] + ".html")
        site, outcome = f"{parts.scheme}://{parts.netloc}", "cached" if path.exists() else "fetched"
        try:
            if outcome == "fetched":
                if parts.scheme not in ("http", "https"):
                    raise PermissionError("only http(s) pages are read")
                if site not in robots:  # each site's robots.txt is read once
                    robots[site] = urllib.robotparser.RobotFileParser(site + "/robots.txt")
                    robots[site].read()
                if not robots[site].can_fetch(USER_AGENT, url):
                    raise PermissionError("its site's robots.txt disallows it")
                time.sleep(max(0.0, last.get(site, -1e9) + config.delay - time.monotonic()))
                last[site] = time.monotonic()
                with opener.open(urllib.request.Request(url, headers={"User-Agent": USER_AGENT}), timeout=30) as page:
                    write_atomic(path, page.read())
        except (OSError, ValueError) as error:  # no network, an HTTP error, a redirect to ftp:// or file://
            outcome = f"{'skipped' if isinstance(error, PermissionError) else 'failed'}: {error}"
        counts[outcome.split(":")[0]] += 1
        if ":" in outcome:
            print(f"{url} {outcome}")
        else:
            page = path.read_bytes().decode("utf-8", errors="replace")
            documents.append({**page_document(page, config.select), "source": url})
    print("pages: " + ", ".join(f"{counts[k]} {k}" for k in ("fetched", "cached", "skipped", "failed")))
    return documents


# Dakshina (Roark et al. 2020): romanization lexicons of 12 South Asian languages, one line per pair of a native-script
# word and one way to write it in Latin letters. They are copied byte for byte, every row kept: several rows with one
# native word are its several romanizations, which the any-reference metric of the seq2seq scripts needs.
DAKSHINA_LANGUAGES = ("bn", "gu", "hi", "kn", "ml", "mr", "pa", "sd", "si", "ta", "te", "ur")
LEXICON_SHA256 = {  # the lexicons we have checked copies of; other files are used as the archive gives them
    "bn.translit.sampled.dev.tsv": "5d85422446dc80129506d8b21657b9283c6fb437ff90292eb62ca24aafb3e525",
    "bn.translit.sampled.train.tsv": "1ebdb9991d66315af330123e7ca7d72ed9ceef6c93ec353dc0f947046415fa04",
    "hi.translit.sampled.dev.tsv": "62019ba0e046ceffd7211a2797daf2d2970da77586ee056dcecaa34c38392bce",
    "hi.translit.sampled.train.tsv": "4b3f872d3363a91f949dfb640acab6a968ed7d2d65829a22af662c3e99ef7803",
    "ta.translit.sampled.dev.tsv": "c5bb92e01c7a2a1d1b8d18463d690519a8100fa14dbde7b38ea3e366df7a0bf8",
    "ta.translit.sampled.train.tsv": "085760e523562b46103b16cfb60a0fd2c5c703bc93e57d9ed2e949e428d172b1"}


def prepare_dakshina(config):
    """Copy one language's lexicons into out_dir, from --input (the archive or a folder), the local data folder
    ($NANOVERSE_DATA/dakshina/<lang>), or the archive downloaded once into the cache (where it was always kept)."""
    names = {split: f"{config.lang}.translit.sampled.{split}.tsv" for split in ("train", "dev", "test")}
    source = Path(config.input or Path(os.environ.get("NANOVERSE_DATA", "")) / "dakshina" / config.lang).expanduser()
    if not config.input and not (os.environ.get("NANOVERSE_DATA") and source.is_dir()):
        source = Path(config.cache_dir) / "dakshina" / "dakshina_dataset_v1.0.tar"
        if not source.is_file():
            print(f"downloading the Dakshina archive (about 2 GB, once) into {source}")
            download("https://storage.googleapis.com/gresearch/dakshina/dakshina_dataset_v1.0.tar", source)
    if source.is_dir():  # an unpacked archive, the mirror's layout, or a folder that holds the files itself
        folders = [source / sub for sub in (".", "lexicons", config.lang, f"{config.lang}/lexicons",
                                            f"dakshina_dataset_v1.0/{config.lang}/lexicons")]
        found = {split: [f / name for f in folders if (f / name).is_file()] for split, name in names.items()}
        lexicons = {split: paths[0].read_bytes() for split, paths in found.items() if paths}
    else:
        lexicons = lexicons_from_archive(source, names)
    if "train" not in lexicons:
        raise SystemExit(f"error: found no {names['train']} in {source}; pass the Dakshina archive "
                         f"(dakshina_dataset_v1.0.tar) or the folder it unpacks to with --input")
    out_dir, splits = make_folder(config.out_dir), {}
    (out_dir / "meta.json").unlink(missing_ok=True)  # as for token folders: written last, it marks a finished run
    for split, data in lexicons.items():
        digest = hashlib.sha256(data).hexdigest()
        if LEXICON_SHA256.get(names[split], digest) != digest:
            raise SystemExit(f"error: {names[split]} in {source} is not the published lexicon (sha256 mismatch); "
                             f"delete it and download the archive again")
        write_atomic(out_dir / names[split], data)
        splits[split] = {"file": names[split], "rows": len(data.splitlines()), "sha256": digest}
    meta = {"format": "nanoverse-dakshina-v1", "lang": config.lang, "source": str(source), "splits": splits}
    write_atomic(out_dir / "meta.json", json.dumps(meta, indent=1).encode())
    print(f"dakshina {config.lang}: " + ", ".join(f"{split} {info['rows']:,} rows" for split, info in splits.items())
          + f" -> {out_dir}" + ("" if "test" in splits else f" (no test split in {source})"))
    return meta


def lexicons_from_archive(archive, names):
    """The lexicons of the tar, by their exact member names: regular files of bounded size, later written to names
    we choose, so a crafted archive cannot place anything outside the output folder."""
    wanted = {f"dakshina_dataset_v1.0/{name.split('.')[0]}/lexicons/{name}": split for split, name in names.items()}

    def refuse(reason):
        raise SystemExit(f"error: {archive} is not the Dakshina archive ({reason}); delete it and download it again")

    lexicons = {}
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                if member.name.startswith("/") or ".." in member.name.split("/"):
                    refuse(f"the member {member.name!r} points outside the archive's folder")
                if member.name.rstrip("/") not in wanted:
                    continue
                if not member.isfile():
                    refuse(f"{member.name} is a {'link' if member.issym() or member.islnk() else 'folder'}, not a file")
                if member.size > 64 << 20:  # the largest lexicon is a few MB
                    refuse(f"{member.name} is {member.size:,} bytes, far more than a lexicon")
                lexicons[wanted[member.name]] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError) as error:
        raise SystemExit(f"error: could not read {archive} ({type(error).__name__}), so it is damaged or cut short; "
                         f"delete it and run again to download it afresh") from None
    return lexicons or refuse(f"it has no {names['train'].split('.')[0]} lexicons")


def check_config(config):
    """Fill in the dataset's defaults, and refuse in one sentence each the mistakes argparse cannot name."""
    config.tokenizer = config.tokenizer or DATASETS[config.dataset].get("tokenizer", "gpt2")
    config.clean = DATASETS[config.dataset].get("clean", True) if config.clean is None else config.clean
    config.out_dir = config.out_dir or str(Path("data", config.dataset, config.lang * (config.dataset == "dakshina")))
    for ok, message in [
        (config.dataset != "custom" or config.input, "the custom dataset needs --input PATH (a file or a folder)"),
        (not config.input or Path(config.input).expanduser().exists(),
         f"--input {config.input} does not exist; pass an existing file or folder"),
        (0 < config.val_fraction < 1, f"--val_fraction must be between 0 and 1, not {config.val_fraction}"),
    ]:
        if not ok:
            raise SystemExit("error: " + message)
    return config


def main(argv=None):
    if argv is None:  # in a notebook sys.argv holds the kernel's own flags (-f kernel.json): run with the defaults
        argv = [] if "ipykernel" in sys.modules else sys.argv[1:]
    try:  # help text comes from the comments beside the Config fields (a notebook may have no source to read)
        comments = dict(re.findall(r"^\s+(\w+): .*?  # (.+)$", inspect.getsource(Config), re.M))
    except (OSError, TypeError):
        comments = {}
    parser = argparse.ArgumentParser(description="Cleanse, explore, tokenize and split text into token files.",
                                     allow_abbrev=False)  # a misspelled flag is an error, never a guess
    choices = {"dataset": list(DATASETS), "tokenizer": ["", "char", "gpt2", "bpe"], "split": ["", "doc", "contiguous"],
               "lang": list(DAKSHINA_LANGUAGES)}
    for field in fields(Config):
        kind = {"action": argparse.BooleanOptionalAction} if field.type is bool else \
            {"type": field.type, "choices": choices.get(field.name)}
        positional = field.name == "dataset"  # the one positional argument: python prepare_data.py poems
        parser.add_argument(field.name if positional else f"--{field.name}", **({"nargs": "?"} if positional else {}),
                            default=field.default, help=comments.get(field.name, "").replace("%", "%%"), **kind)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        known = [f"--{prefix}{f.name}" for f in fields(Config) for prefix in ("", "no-")]
        close = difflib.get_close_matches(unknown[0].split("=")[0], known, n=1)
        parser.error(f"unrecognized argument {unknown[0]}" + (f"; did you mean {close[0]}?" if close else ""))
    config = Config(**vars(args))
    return prepare_dakshina(check_config(config)) if config.dataset == "dakshina" else prepare(config)


# %% Run
if __name__ == "__main__":
    main()
