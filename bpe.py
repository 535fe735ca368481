"""Byte-level BPE: the tokenizer that turns text into GPT-2's ids, trained from scratch and loaded exactly.

Byte pair encoding (Sennrich et al. 2016, https://arxiv.org/abs/1508.07909) starts from the 256 byte values and
repeatedly glues the most frequent adjacent pair of tokens into a new token. GPT-2 (Radford et al. 2019, section 2.2)
runs it on UTF-8 bytes, so every string can be encoded, and first cuts the text into pre-token chunks with a regex so
that merges never cross a word and its punctuation. This file trains such a tokenizer twice over (a textbook loop and
a fast trainer that gives the same merges), encodes and decodes, and loads GPT-2's own files to reproduce tiktoken's
`gpt2` ids exactly.

Run:
    CPU:   python bpe.py train --vocab_size 512 --out out/bpe      (Tiny Shakespeare, about a second)
           python bpe.py show --model out/bpe.model "To be, or not to be" --explain Shakespeare
           python bpe.py show --model gpt2 "Hello world!"           (GPT-2's own tokenizer)
    GPU:   not needed: tokenization is string work on the CPU.
    Colab: paste this file into a cell and run it (it trains on Tiny Shakespeare), or main(["show", "--model", "gpt2",
           "Hello world!"]).

Python:
    >>> tok = Tokenizer.train("aaabdaaabac", vocab_size=259, pattern="none", special_tokens=())
    >>> tok.encode("aaabdaaabac")      # merges aa -> 256, ab -> 257, (aa)(ab) -> 258: "XdXac"; decode undoes it
    [258, 100, 258, 97, 99]
"""

import argparse
import difflib
import heapq
import inspect
import json
import os
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, fields
from itertools import chain, repeat
from pathlib import Path

import regex
from tqdm import tqdm


@dataclass
class Config:
    command: str = "train"  # what to do: train | encode | decode | show
    input: str = ""  # training (or encoding) text file; default: Tiny Shakespeare, which ships with the repository
    vocab_size: int = 512  # final vocabulary size: 256 bytes + merges + special tokens
    pattern: str = "gpt2"  # pre-tokenizer split: gpt2 | gpt4 | none (one chunk: slow, for study) | any regex
    special: tuple = ("<|endoftext|>",)  # special tokens added after the merges (give none for no special tokens)
    out: str = "out/bpe"  # output prefix for train: writes PREFIX.model and PREFIX.vocab
    model: str = "out/bpe.model"  # model file for encode / decode / show, or "gpt2" for GPT-2's own tokenizer
    explain: str = ""  # show: print the merges applied to this word step by step
    verbose: bool = True  # train: progress bar and summary


# %% Pre-tokenization: split text into chunks; merges happen only inside a chunk

# GPT-2's pattern from its original encoder.py: contractions, an optional space + letters, an optional space + digits,
# an optional space + other symbols, then whitespace (a run of spaces keeps its last space for the next word).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# GPT-4's pattern, character for character as tiktoken's cl100k_base has it: case-insensitive contractions, at most 3
# digits per chunk, newlines apart, whitespace at the very end of a text one chunk (\s++$). Possessive quantifiers
# (++, ?+) never give back what they matched, so the regex cannot backtrack into them.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s"""
)
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN, "none": None}


def resolve_pattern(pattern):
    """A pattern name (gpt2, gpt4, none) or a regex of your own -> the regex string (None: no split)."""
    if pattern is None or pattern in PATTERNS:
        return PATTERNS.get(pattern)
    try:
        groups = regex.compile(pattern).groups
    except regex.error as error:
        raise ValueError(f"pattern {pattern!r} is neither gpt2, gpt4, none nor a valid regex ({error})") from None
    if groups:  # findall would return what the groups matched, not the chunks
        raise ValueError(f"pattern {pattern!r} has a capture group; write groups as (?:...) so that it finds chunks")
    return pattern


# %% Training: the one operation of BPE (merge), the textbook trainer and the fast one


def merge(ids, pair, new_id):
    """Replace every non-overlapping occurrence of `pair` in `ids`, left to right, by `new_id`.

    >>> merge([97, 97, 97, 98], (97, 97), 256)
    [256, 97, 98]
    """
    first, second = pair
    out, i, n = [], 0, len(ids)
    while i < n:
        if ids[i] == first and i + 1 < n and ids[i + 1] == second:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


# Tie-break, the same in both trainers: the pair with the highest count wins; among equal counts the smaller pair
# (by first id, then second id) wins. That is simply the smallest (-count, pair), which a min-heap gives for free.


def train_reference(chunks, num_merges):
    """The textbook trainer: count every adjacent pair in every chunk, merge the most frequent, repeat.

    O(merges x text): clear, and the yardstick the fast trainer must match merge for merge.
    """
    words = [list(chunk.encode("utf-8")) for chunk in chunks]
    merges = {}
    for new_id in range(256, 256 + num_merges):
        counts = Counter()
        for word in words:
            counts.update(zip(word, word[1:]))
        if not counts:
            break  # every chunk is a single token: nothing left to merge
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges[best] = new_id
        words = [merge(word, best, new_id) for word in words]
    return merges


def train_fast(chunks, num_merges, progress=lambda: None):
    """The same merges as train_reference, without rereading the text for every merge.

    1. Chunks repeat ("the" appears thousands of times): keep each distinct chunk once with its frequency.
    2. Count pairs once, then keep the counts up to date: a merge changes only the chunks containing the pair, and
       `where` says which chunks those are.
    3. Pick the best pair from a heap of (-count, pair). Counts only fall, except for pairs with the new token, which
       are pushed after each merge; so an entry whose count is out of date is re-pushed with its true count when it
       surfaces (lazy deletion), and the first up-to-date entry popped is the true best.
    """
    frequency = Counter(chunks)
    words = [list(chunk.encode("utf-8")) for chunk in frequency]
    freqs = list(frequency.values())
    pair_counts = defaultdict(int)  # pair -> how often it occurs in the whole text
    where = defaultdict(set)  # pair -> indices of the words that contain it (may hold stale indices)
    for index, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freq
            where[pair].add(index)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    merges = {}
    for new_id in range(256, 256 + num_merges):
        best = None
        while heap:
            negative_count, pair = heapq.heappop(heap)
            count = pair_counts[pair]
            if count == -negative_count:
                best = pair
                break
            if count > 0:  # out of date: the pair became rarer since this entry was pushed
                heapq.heappush(heap, (-count, pair))
        if best is None:
            break  # every chunk is a single token: nothing left to merge
        merges[best] = new_id
        new_pairs = set()
        for index in where.pop(best):
            word = words[index]
            merged = merge(word, best, new_id)
            if len(merged) == len(word):
                continue  # a stale index: an earlier merge already took this pair apart here
            freq = freqs[index]
            for pair in zip(word, word[1:]):
                pair_counts[pair] -= freq
            for pair in zip(merged, merged[1:]):
                pair_counts[pair] += freq
                if new_id in pair:
                    where[pair].add(index)
                    new_pairs.add(pair)
            words[index] = merged
        for pair in new_pairs:
            heapq.heappush(heap, (-pair_counts[pair], pair))
        progress()
    return merges


# %% The tokenizer: train, encode with special tokens, decode, explain

FORMAT = "nanoverse-bpe v1"
NEVER = float("inf")  # the priority of a pair that was never merged
CACHE_LIMIT = 100_000  # distinct chunks remembered by encode (about 20 MB at most)


class Tokenizer:
    """A byte-level BPE tokenizer: ids for the 256 bytes, ordered merges (pair -> new id), special tokens.

    A merge made earlier always has a smaller new id, so the new id doubles as the merge's priority when encoding.
    Trained tokenizers give byte b the id b; GPT-2's files number the bytes differently, hence `byte_ids`.
    """

    def __init__(self, merges, pattern=GPT2_PATTERN, special_tokens=None, byte_ids=None):
        self.merges = dict(merges)  # (left id, right id) -> new id, in the order they were learned
        self.pattern = pattern  # the regex string, or None for no split
        self.special_tokens = dict(special_tokens or {})  # text -> id
        self.byte_ids = list(byte_ids) if byte_ids is not None else list(range(256))  # byte value -> id
        self.vocab = {token_id: bytes([byte]) for byte, token_id in enumerate(self.byte_ids)}  # id -> bytes
        for (left, right), new_id in self.merges.items():
            self.vocab[new_id] = self.vocab[left] + self.vocab[right]
        self.vocab.update((token_id, text.encode("utf-8")) for text, token_id in self.special_tokens.items())
        self._split = regex.compile(pattern).findall if pattern else (lambda text: [text] if text else [])
        self._cache = {}  # chunk -> tuple of ids

    @property
    def vocab_size(self):
        return len(self.vocab)

    @classmethod
    def train(cls, text, vocab_size, pattern="gpt2", special_tokens=("<|endoftext|>",), verbose=False,
              trainer="fast"):
        """Learn vocab_size - 256 - len(special_tokens) merges from `text`.

        Special tokens in the text are cut out first (merges never cross them) and get the last ids.
        trainer="reference" runs the textbook loop instead: same merges, much slower.
        """
        special_tokens = list(dict.fromkeys(special_tokens or ()))
        if "" in special_tokens:  # an empty token would match between every two characters of the text
            raise ValueError("a special token is empty: give each one some text, e.g. --special '<|endoftext|>', "
                             "or --special with nothing after it for no special tokens")
        smallest = 256 + len(special_tokens)
        if not isinstance(vocab_size, int) or vocab_size < smallest:
            raise ValueError(f"vocab_size={vocab_size} is too small: it must be at least 256 bytes + "
                             f"{len(special_tokens)} special tokens = {smallest}")
        parts = [part for part in _cut_specials(text, special_tokens) if part]
        if not parts:
            raise ValueError("the training text is empty: give a text with at least a few words in it")
        pattern = resolve_pattern(pattern)
        split = regex.compile(pattern).findall if pattern else (lambda part: [part])
        chunks = [chunk for part in parts for chunk in split(part)]
        if sum(map(len, chunks)) != sum(map(len, parts)):  # the chunks must add back up to the text
            raise ValueError(f"pattern {pattern!r} skips some characters of the text, which encoding would lose; "
                             "let it match everything, e.g. end it with |\\s+|.")
        with tqdm(total=vocab_size - smallest, desc="merges", unit="merge", disable=not verbose) as bar:
            merges = train_reference(chunks, vocab_size - smallest) if trainer == "reference" else \
                train_fast(chunks, vocab_size - smallest, progress=bar.update)
        # Training stops early when every chunk is a single token; the special tokens follow the last merge.
        return cls(merges, pattern, {text: 256 + len(merges) + i for i, text in enumerate(special_tokens)})

    def _encode_chunk(self, chunk_bytes):
        """BPE on one chunk: keep applying the earliest-learned merge present (smallest new id) until none applies."""
        ids = [self.byte_ids[byte] for byte in chunk_bytes]
        merges_get = self.merges.get
        # priorities[i]: the new id that merging ids[i], ids[i+1] would give (NEVER if that pair was never merged)
        priorities = list(map(merges_get, zip(ids, ids[1:]), repeat(NEVER)))
        while priorities:
            new_id = min(priorities)
            if new_id == NEVER:
                break  # no adjacent pair was ever merged: done
            index = priorities.index(new_id)  # the leftmost occurrence; others follow in the next rounds, because
            ids[index:index + 2] = (new_id,)  # every pair with the new token was learned later (has a larger id)
            del priorities[index]  # only the two neighbouring pairs change
            if index > 0:
                priorities[index - 1] = merges_get((ids[index - 1], new_id), NEVER)
            if index < len(priorities):
                priorities[index] = merges_get((new_id, ids[index + 1]), NEVER)
        return ids

    def encode_ordinary(self, text):
        """Encode text, treating special-token text as ordinary text."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates ("\ud800") have no UTF-8 form: make them U+FFFD, as tiktoken does
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        if self.pattern is None:
            return self._encode_chunk(text.encode("utf-8")) if text else []
        chunks, cache = self._split(text), self._cache
        missing = set(chunks).difference(cache)  # each distinct chunk is encoded once, then looked up
        if missing:
            if len(cache) + len(missing) > CACHE_LIMIT:
                cache.clear()
                missing = set(chunks)
            for chunk in missing:
                cache[chunk] = tuple(self._encode_chunk(chunk.encode("utf-8")))
        return list(chain.from_iterable(map(cache.__getitem__, chunks)))

    def encode(self, text, allowed_special="none_raise"):
        """Encode text. allowed_special, as in minbpe: "all", a set of special tokens, "none" (their text is encoded
        as ordinary text) or "none_raise", the default: special-token text in `text` raises, so that user text can
        never produce <|endoftext|> by accident (a guard against prompt injection)."""
        allowed = set(self.special_tokens) if allowed_special == "all" else \
            set() if allowed_special in ("none", "none_raise") else set(allowed_special)
        if not allowed <= set(self.special_tokens):
            raise ValueError(f"allowed_special names {sorted(allowed - set(self.special_tokens))}, which are not "
                             f"special tokens of this tokenizer (it has {sorted(self.special_tokens)})")
        disallowed = [s for s in self.special_tokens if s not in allowed and s in text and allowed_special != "none"]
        if disallowed:
            raise ValueError(f"the text contains the special token {disallowed[0]!r}, which is not allowed: pass "
                             f"allowed_special={{{disallowed[0]!r}}} (or 'all') to encode it as a special token, "
                             "or allowed_special='none' to encode it as ordinary text")
        if not allowed:
            return self.encode_ordinary(text)
        parts = _special_regex(allowed).split(text)  # ordinary text at even indices, a special token at odd ones
        return [token_id for index, part in enumerate(parts) for token_id in
                (self.encode_ordinary(part) if index % 2 == 0 else [self.special_tokens[part]])]

    def decode(self, ids):
        """ids -> text. Bytes that are not valid UTF-8 (a token can end inside a character) become U+FFFD."""
        ids = ids.tolist() if hasattr(ids, "tolist") else ids  # a torch tensor or numpy array of ids
        try:
            data = b"".join(map(self.vocab.__getitem__, ids))
        except (KeyError, TypeError):
            bad = next(i for i in ids if not isinstance(i, int) or i not in self.vocab)
            raise ValueError(f"cannot decode token id {bad!r}: this tokenizer's ids are 0..{self.vocab_size - 1}") \
                from None
        return data.decode("utf-8", errors="replace")

    def explain(self, text):
        """The merges BPE applies to each chunk of `text`, as printable steps: the teaching view of _encode_chunk."""
        steps = []
        for chunk in self._split(text):
            ids = [self.byte_ids[byte] for byte in chunk.encode("utf-8")]
            steps.append("bytes: " + " ".join(f"[{render(self.vocab[i])}]" for i in ids))
            while len(ids) >= 2:
                pair = min(zip(ids, ids[1:]), key=lambda p: self.merges.get(p, NEVER))
                if pair not in self.merges:
                    break  # the same rule as _encode_chunk: the earliest-learned merge first
                new_id = self.merges[pair]
                ids = merge(ids, pair, new_id)
                steps.append(f"merge [{render(self.vocab[pair[0]])}] + [{render(self.vocab[pair[1]])}] -> "
                             f"{new_id}: " + " ".join(f"[{render(self.vocab[i])}]" for i in ids))
            steps.append(f"ids: {ids}")
        return steps

    def save(self, prefix):
        """Write prefix.model (to load) and prefix.vocab (for people); both atomically."""
        lines = [FORMAT, f"pattern {json.dumps(self.pattern)}", f"specials {len(self.special_tokens)}"]
        lines += [f"{json.dumps(text)} {token_id}" for text, token_id in self.special_tokens.items()]
        lines += ["bytes " + " ".join(map(str, self.byte_ids)), f"merges {len(self.merges)}"]
        lines += [f"{left} {right} {new_id}" for (left, right), new_id in self.merges.items()]
        write_atomic(f"{prefix}.model", "\n".join(lines) + "\n")
        made_from = {new_id: "".join(f"[{render(self.vocab[i])}]" for i in pair)
                     for pair, new_id in self.merges.items()}
        write_atomic(f"{prefix}.vocab", "".join(
            f"[{render(self.vocab[i])}] {i}" + (f" <- {made_from[i]}" if i in made_from else " (special)"
                                                if i in self.special_tokens.values() else "") + "\n"
            for i in sorted(self.vocab)))

    @classmethod
    def load(cls, path):
        """Read a .model file written by save(); another file, or a damaged one, is refused in one sentence."""
        try:
            lines = Path(path).read_text(encoding="utf-8-sig").splitlines()  # -sig: an editor's byte order mark
        except UnicodeDecodeError:
            lines = []
        if not lines or lines[0] != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT!r} file (a .vocab listing is for people; another version must "
                             "be trained again): pass the PREFIX.model that `bpe.py train --out PREFIX` wrote")
        try:
            keyword, pattern = lines[1].split(" ", 1)
            pattern, count = json.loads(pattern), int(lines[2].removeprefix("specials "))
            special_tokens = {json.loads(text): int(token_id) for text, token_id in
                              (line.rsplit(" ", 1) for line in lines[3:3 + count])}
            byte_ids = [int(token_id) for token_id in lines[3 + count].removeprefix("bytes ").split()]
            merges = {(left, right): new_id for left, right, new_id in (map(int, line.split())
                                                                        for line in lines[5 + count:])}
            tokenizer = cls(merges, pattern, special_tokens, byte_ids)  # a merge of unknown ids is a KeyError here
            new_ids = list(merges.values())
            if (keyword, lines[4 + count]) != ("pattern", f"merges {len(merges)}") or len(set(byte_ids)) != 256 \
                    or len(lines) != 5 + count + len(merges) or new_ids != sorted(set(new_ids)) \
                    or tokenizer.vocab_size != 256 + len(merges) + len(special_tokens):
                raise ValueError("its parts do not fit together")
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, regex.error) as error:
            raise ValueError(f"{path} is damaged ({error}); save the tokenizer again") from None
        return tokenizer

    @classmethod
    def from_gpt2_files(cls, encoder_json, vocab_bpe):
        """GPT-2's own tokenizer from its encoder.json (token -> id) and vocab.bpe (the merges, in order)."""
        encoder = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
        pairs = [line.split(" ") for line in Path(vocab_bpe).read_text(encoding="utf-8").split("\n")[1:] if line]
        byte_to_char = bytes_to_unicode()  # (line 0 of vocab.bpe is "#version: 0.2")
        byte_ids = [encoder[byte_to_char[byte]] for byte in range(256)]
        merges = {(encoder[left], encoder[right]): encoder[left + right] for left, right in pairs}  # in rank order
        made = set(byte_ids) | set(merges.values())  # a token that no byte and no merge makes is special
        special_tokens = {text: token_id for text, token_id in encoder.items() if token_id not in made}
        return cls(merges, GPT2_PATTERN, special_tokens, byte_ids)

    @classmethod
    def from_tiktoken(cls, encoding):
        """Any tiktoken encoding: tiktoken stores only token bytes -> rank, so recover which pair made each token.

        Running BPE on a token's bytes with the merges of lower rank must stop at exactly two tokens: the pair.
        """
        ranks = encoding._mergeable_ranks  # bytes -> rank (= id); tiktoken's own attributes, there is no public API
        byte_ids = [ranks[bytes([byte])] for byte in range(256)]
        tokenizer = cls({}, encoding._pat_str, {}, byte_ids)
        for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
            if len(token) == 1:
                continue
            parts = tokenizer._encode_chunk(token)
            if len(parts) != 2:
                raise ValueError(f"token {token!r} (rank {rank}) is not the merge of two earlier tokens")
            tokenizer.merges[tuple(parts)] = rank
            tokenizer.vocab[rank] = token
        return cls(tokenizer.merges, encoding._pat_str, encoding._special_tokens, byte_ids)


def _special_regex(special_tokens):
    """A regex that captures any of the special tokens; longest first, so that "<|end|>" loses to "<|end|>2"."""
    alternatives = sorted(special_tokens, key=len, reverse=True)
    return regex.compile("(" + "|".join(regex.escape(token) for token in alternatives) + ")")


def _cut_specials(text, special_tokens):
    """The pieces of `text` between occurrences of the special tokens (merges must not cross them)."""
    return _special_regex(special_tokens).split(text)[::2] if special_tokens else [text]


def show(tokenizer, text):
    """The tokens of `text` with | between them, then their ids."""
    ids = tokenizer.encode(text, allowed_special="all")
    return ["|".join(render(tokenizer.vocab[i]) for i in ids),
            f"{len(ids)} tokens for {len(text.encode())} bytes: {ids}"]


def bytes_to_unicode():
    """GPT-2's files spell bytes as printable characters; this is its byte -> character table.

    Bytes that are printable Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the other 68
    bytes (space, newline, control bytes...) are given the characters 256, 257, ... in byte order, so that every token
    is a visible, whitespace-free string.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = iter(range(256, 512))
    return {byte: chr(byte) if byte in printable else chr(next(others)) for byte in range(256)}


def render(token_bytes):
    """A token's bytes as readable text: invalid UTF-8 becomes �, control characters are escaped (\\n, \\x00)."""
    text = token_bytes.decode("utf-8", errors="replace")
    return "".join(ch if ch.isprintable() or ch == " " else repr(ch)[1:-1] for ch in text)


# %% Plumbing: files, GPT-2's tokenizer, command line (skip on a first read)


def write_atomic(path, content):
    """Write to a new temporary file beside `path`, then rename: a crash never leaves half a file. Mode "x" makes a
    new file (with the usual permissions of the umask) and never follows a link planted at the temporary name."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "xb") as file:
            file.write(content.encode("utf-8"))
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def gpt2_tokenizer():
    """GPT-2's tokenizer, rebuilt from tiktoken's copy of its files (tiktoken downloads them once and caches them)."""
    import tiktoken

    return Tokenizer.from_tiktoken(tiktoken.get_encoding("gpt2"))


def read_text(path):
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # -sig: a leading byte order mark is not part of the text
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read {path} as text ({error}): give one UTF-8 text file") from None
    if text.count("\x00") > max(1, len(text) // 100):  # a token file of small ids is valid UTF-8, but not text
        raise ValueError(f"{path} is full of NUL bytes, so it is binary (a token file?), not text: pass its text file")
    return text


def run(config, words):
    """Carry out one command; `words` are the positional arguments (text to encode / show, ids to decode)."""
    if config.command == "train":
        import prepare_data  # the one place that finds (or downloads) the corpora: here Tiny Shakespeare

        text = read_text(config.input) if config.input else prepare_data.tiny_shakespeare()
        try:  # find out before training, not after, that the model cannot be written
            Path(config.out).parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"cannot create the folder of --out {config.out} ({error.strerror}): choose a prefix in "
                             f"a folder you can write to") from None
        tokenizer = Tokenizer.train(text, config.vocab_size, config.pattern, config.special, config.verbose)
        tokenizer.save(config.out)
        if config.verbose:
            ids, size = tokenizer.encode(text, allowed_special="all"), len(text.encode())
            print(f"{tokenizer.vocab_size} tokens ({len(tokenizer.merges)} merges, specials "
                  f"{list(tokenizer.special_tokens)}); the text is {size:,} bytes -> {len(ids):,} tokens, "
                  f"{size / max(len(ids), 1):.2f} bytes per token; wrote {config.out}.model and {config.out}.vocab")
            print("\n".join(show(tokenizer, text[:80].strip() or text[:80])))
        return tokenizer
    if config.model != "gpt2" and not Path(config.model).is_file():
        raise ValueError(f"no model file {config.model}: train one with `python bpe.py train --out PREFIX` and pass "
                         "--model PREFIX.model (or --model gpt2)")
    tokenizer = gpt2_tokenizer() if config.model == "gpt2" else Tokenizer.load(config.model)
    if config.command == "decode":
        ids = " ".join(words).replace(",", " ").split()
        if not ids or not all(word.isdigit() for word in ids):
            raise ValueError("decode takes token ids as integers, e.g. `python bpe.py decode --model M 464 3290`")
        print(tokenizer.decode(list(map(int, ids))))
        return list(map(int, ids))
    text = " ".join(words) if words else (read_text(config.input) if config.input else "")
    if not text and not config.explain:
        raise ValueError(f"{config.command} needs some text: `python bpe.py {config.command} --model M \"some text\"`"
                         " (or --input FILE)")
    if config.command == "encode":
        ids = tokenizer.encode(text, allowed_special="all")
        print(" ".join(map(str, ids)))
        return ids
    print("\n".join((show(tokenizer, text) if text else []) + (tokenizer.explain(config.explain) if config.explain
                                                                 else [])))
    return tokenizer


def main(argv=None):
    if argv is None:  # in a notebook sys.argv holds the kernel's own flags (-f kernel.json): run with the defaults
        argv = [] if "ipykernel" in sys.modules else sys.argv[1:]
    try:  # help text comes from the comments beside the Config fields (a notebook may have no source to read)
        comments = dict(re.findall(r"^\s+(\w+): .*?  # (.+)$", inspect.getsource(Config), re.M))
    except (OSError, TypeError):
        comments = {}
    parser = argparse.ArgumentParser(description="Train, use and inspect a byte-level BPE tokenizer.",
                                     allow_abbrev=False)  # a misspelled flag is an error, never a guess
    for field in fields(Config):
        help_text = comments.get(field.name, "").replace("%", "%%")  # argparse formats help strings with %
        if field.name == "command":
            parser.add_argument("command", nargs="?", default=field.default, help=help_text,
                                choices=["train", "encode", "decode", "show"])
        else:
            kind = {bool: {"action": argparse.BooleanOptionalAction}, tuple: {"nargs": "*"}}.get(field.type,
                                                                                                 {"type": field.type})
            parser.add_argument(f"--{field.name}", default=field.default, help=help_text, **kind)
    parser.add_argument("words", nargs="*", help="show / encode: the text; decode: the ids")
    args, unknown = parser.parse_known_intermixed_args(argv)  # options and text in any order
    if unknown:  # a flag that trains the default tokenizer instead of the one asked for must not pass silently
        known = [f"--{prefix}{f.name}" for f in fields(Config) for prefix in ("", "no-")]
        close = difflib.get_close_matches(unknown[0].split("=")[0], known, n=1)
        parser.error(f"unrecognized argument {unknown[0]}" + (f"; did you mean {close[0]}?" if close else ""))
    words = args.__dict__.pop("words")
    if words and args.command == "train":
        parser.error(f"train reads its text from --input FILE, not from the command line: remove {' '.join(words)!r}")
    try:
        return run(Config(**vars(args)), words)
    except (ValueError, OSError) as error:
        raise SystemExit(f"error: {error}") from None


# %% Run
if __name__ == "__main__":
    main()
