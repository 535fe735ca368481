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
    Colab: paste this file into a cell and run it (it trains on Tiny Shakespeare and shows a sentence), or call
           main(["show", "--model", "gpt2", "Hello world!"]).

Python:
    >>> tok = Tokenizer.train("aaabdaaabac", vocab_size=259, pattern="none", special_tokens=())
    >>> tok.encode("aaabdaaabac")      # merges aa -> 256, ab -> 257, (aa)(ab) -> 258: "XdXac"
    [258, 100, 258, 97, 99]
    >>> tok.decode([258, 100, 258, 97, 99])
    'aaabdaaabac'
"""

import argparse
import hashlib
import heapq
import json
import os
import sys
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, fields
from itertools import chain, repeat
from pathlib import Path

import regex
from tqdm import tqdm


@dataclass
class Config:
    command: str = "train"  # what to do: train | encode | decode | show
    input: str = ""  # training (or encoding) text file; default: Tiny Shakespeare from $NANOVERSE_DATA or downloaded
    vocab_size: int = 512  # final vocabulary size: 256 bytes + merges + special tokens
    pattern: str = "gpt2"  # pre-tokenizer split: gpt2 | gpt4 | none (one chunk: slow, for study) | any regex
    special: tuple = ("<|endoftext|>",)  # special tokens added after the merges (give none for no special tokens)
    out: str = "out/bpe"  # output prefix for train: writes PREFIX.model and PREFIX.vocab
    model: str = "out/bpe.model"  # model file for encode / decode / show, or "gpt2" for GPT-2's own tokenizer
    explain: str = ""  # show: print the merges applied to this word step by step
    color: bool = True  # show: colour the token boundaries on a terminal (else mark them with |)
    verbose: bool = True  # train: progress bar and summary


# ----------------------------------------------------------------------------------------------------------------------
# Pre-tokenization: split text into chunks; merges happen only inside a chunk.

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
        regex.compile(pattern)
    except regex.error as error:
        raise ValueError(f"pattern {pattern!r} is neither gpt2, gpt4, none nor a valid regex ({error})") from None
    return pattern


# ----------------------------------------------------------------------------------------------------------------------
# The one operation of BPE, shared by both trainers and by the encoder.


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


def train_fast(chunks, num_merges, progress=None):
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
        if progress is not None:
            progress()
    return merges


# ----------------------------------------------------------------------------------------------------------------------
# GPT-2's files spell bytes as printable characters; this is the table that undoes it.


def bytes_to_unicode():
    """GPT-2's byte -> character table for encoder.json and vocab.bpe.

    Bytes that are printable Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the other 68
    bytes (space, newline, control bytes...) are given the characters 256, 257, ... in byte order, so that every token
    is a visible, whitespace-free string.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def render(token_bytes):
    """A token's bytes as readable text: invalid UTF-8 becomes �, control characters are escaped (\\n, \\x00)."""
    text = token_bytes.decode("utf-8", errors="replace")
    return "".join(ch if ch.isprintable() or ch == " " else repr(ch)[1:-1] for ch in text)


# ----------------------------------------------------------------------------------------------------------------------
# The tokenizer.

FORMAT = "nanoverse-bpe v1"
NEVER = float("inf")  # the priority of a pair that was never merged
CACHE_LIMIT = 100_000  # distinct chunks remembered by encode (about 20 MB at most)
LONG_CHUNK = 64  # chunks of more bytes take the heap encoder (faster above a few dozen bytes); words stay in the loop


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
        for text, token_id in self.special_tokens.items():
            self.vocab[token_id] = text.encode("utf-8")
        self._split = regex.compile(pattern).findall if pattern else (lambda text: [text] if text else [])
        self._byte_table = bytes(self.byte_ids) if max(self.byte_ids) < 256 else None
        self._cache = {}  # chunk -> tuple of ids

    @property
    def vocab_size(self):
        return len(self.vocab)

    # -- training ------------------------------------------------------------------------------------------------------

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
        if not text or all(not part for part in _cut_specials(text, special_tokens)):
            raise ValueError("the training text is empty: give a text with at least a few words in it")
        pattern = resolve_pattern(pattern)
        split = regex.compile(pattern).findall if pattern else (lambda part: [part])
        chunks = [chunk for part in _cut_specials(text, special_tokens) if part for chunk in split(part)]
        num_merges = vocab_size - smallest
        if trainer == "reference":
            merges = train_reference(chunks, num_merges)
        elif trainer == "fast":
            with tqdm(total=num_merges, desc="merges", unit="merge", disable=not verbose) as bar:
                merges = train_fast(chunks, num_merges, progress=bar.update)
        else:
            raise ValueError(f"trainer={trainer!r} is unknown: use 'fast' or 'reference'")
        first_special = 256 + len(merges)
        specials = {text: first_special + i for i, text in enumerate(special_tokens)}
        tokenizer = cls(merges, pattern, specials)
        if verbose and len(merges) < num_merges:
            print(f"stopped after {len(merges)} merges: every chunk of the text is already a single token")
        return tokenizer

    # -- encoding ------------------------------------------------------------------------------------------------------

    def _encode_chunk(self, chunk_bytes):
        """BPE on one chunk: keep applying the earliest-learned merge present (smallest new id) until none applies."""
        if self._byte_table is not None:  # bytes -> ids in C: GPT-2's byte ids are a permutation of 0..255
            ids = list(chunk_bytes.translate(self._byte_table))
        else:
            ids = [self.byte_ids[byte] for byte in chunk_bytes]
        if len(ids) > LONG_CHUNK:  # the loop below rescans every pair after each merge: quadratic in the length
            return self._encode_long_chunk(ids)
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

    def _encode_long_chunk(self, ids):
        """The same merges as the loop in _encode_chunk, in O(n log n) instead of O(n^2) for a chunk of n ids.

        The loop rescans every pair after each merge; fine for a word, hopeless for a whole book encoded with
        pattern="none". Here the pairs wait in a heap keyed by (new id, position): the heap's top is the earliest-
        learned merge and, among equal ones, the leftmost, exactly the loop's choice. The ids form a linked list
        (next_of / previous_of), so a merge only unlinks one node and pushes the two pairs it creates. Entries that a
        merge made out of date stay in the heap and are skipped when they surface.
        """
        merges_get, size = self.merges.get, len(ids)
        next_of = list(range(1, size + 1))  # size: no next id
        previous_of = list(range(-1, size - 1))  # -1: no previous id
        heap = [(new_id, index) for index, new_id in enumerate(map(merges_get, zip(ids, ids[1:])))
                if new_id is not None]
        heapq.heapify(heap)
        while heap:
            new_id, index = heapq.heappop(heap)
            right = next_of[index]
            if ids[index] is None or right == size or merges_get((ids[index], ids[right])) != new_id:
                continue  # out of date: this node was merged away, or its pair changed since the entry was pushed
            ids[index], ids[right] = new_id, None  # the left node becomes the new token, the right one leaves
            after = next_of[index] = next_of[right]
            if after < size:
                previous_of[after] = index
                pair_id = merges_get((new_id, ids[after]))
                if pair_id is not None:
                    heapq.heappush(heap, (pair_id, index))
            before = previous_of[index]
            if before >= 0:
                pair_id = merges_get((ids[before], new_id))
                if pair_id is not None:
                    heapq.heappush(heap, (pair_id, before))
        return [token_id for token_id in ids if token_id is not None]

    def encode_ordinary(self, text):
        """Encode text, treating special-token text as ordinary text."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates ("\ud800") have no UTF-8 form: make them U+FFFD, as tiktoken does
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        if self.pattern is None:
            return self._encode_chunk(text.encode("utf-8")) if text else []
        chunks = self._split(text)
        cache = self._cache
        missing = set(chunks).difference(cache)  # each distinct chunk is encoded once, then looked up
        if missing:
            if len(cache) + len(missing) > CACHE_LIMIT:
                cache.clear()
                missing = set(chunks)
            for chunk in missing:
                cache[chunk] = tuple(self._encode_chunk(chunk.encode("utf-8")))
        return list(chain.from_iterable(map(cache.__getitem__, chunks)))

    def encode(self, text, allowed_special="none_raise"):
        """Encode text. allowed_special says which special tokens may appear as themselves, with minbpe's options ("all"
        and a set as in tiktoken; the two "none" spellings stand in for tiktoken's disallowed_special):

        "none_raise" (default): none, and special-token text in `text` raises ValueError (a guard against prompt
        injection: user text must not produce <|endoftext|> by accident); "none": none, their text is encoded as
        ordinary text; "all": all of them; a set of strings: those, and any other special-token text raises.
        """
        if allowed_special == "all":
            allowed = set(self.special_tokens)
        elif allowed_special in ("none", "none_raise"):
            allowed = set()
        elif isinstance(allowed_special, (set, frozenset, list, tuple)):
            allowed = set(allowed_special)
            unknown = allowed - set(self.special_tokens)
            if unknown:
                raise ValueError(f"allowed_special names {sorted(unknown)}, which are not special tokens of this "
                                 f"tokenizer (it has {sorted(self.special_tokens)})")
        else:
            raise ValueError(f"allowed_special={allowed_special!r} is not understood: use 'none_raise', 'none', "
                             "'all' or a set of special-token strings")
        if allowed_special != "none":
            disallowed = [s for s in self.special_tokens if s not in allowed and s in text]
            if disallowed:
                raise ValueError(f"the text contains the special token {disallowed[0]!r}, which is not allowed: pass "
                                 f"allowed_special={{{disallowed[0]!r}}} (or 'all') to encode it as a special token, "
                                 "or allowed_special='none' to encode it as ordinary text")
        if not allowed:
            return self.encode_ordinary(text)
        ids = []
        for index, part in enumerate(_special_regex(allowed).split(text)):
            if index % 2 == 0:  # ordinary text between special tokens (the split's captured group is odd)
                ids.extend(self.encode_ordinary(part))
            else:
                ids.append(self.special_tokens[part])
        return ids

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

    # -- saving and loading --------------------------------------------------------------------------------------------

    def save(self, prefix):
        """Write prefix.model (to load) and prefix.vocab (for people); both atomically."""
        lines = [FORMAT, f"pattern {json.dumps(self.pattern)}", f"specials {len(self.special_tokens)}"]
        lines += [f"{json.dumps(text)} {token_id}" for text, token_id in self.special_tokens.items()]
        lines += ["bytes " + " ".join(map(str, self.byte_ids)), f"merges {len(self.merges)}"]
        lines += [f"{left} {right} {new_id}" for (left, right), new_id in self.merges.items()]
        _write_atomic(f"{prefix}.model", "\n".join(lines) + "\n")
        made_from = {new_id: pair for pair, new_id in self.merges.items()}
        human = []
        for token_id in sorted(self.vocab):
            shown = f"[{render(self.vocab[token_id])}] {token_id}"
            if token_id in made_from:
                left, right = made_from[token_id]
                shown += f" <- [{render(self.vocab[left])}] + [{render(self.vocab[right])}]"
            elif token_id in self.special_tokens.values():
                shown += " (special)"
            human.append(shown)
        _write_atomic(f"{prefix}.vocab", "\n".join(human) + "\n")

    @classmethod
    def load(cls, path):
        """Read a .model file written by save(); a wrong version or a damaged line is named in a ValueError."""
        path = str(path)
        try:
            with open(path, encoding="utf-8-sig") as file:  # -sig: an editor's byte order mark is not a line
                lines = list(enumerate(file.read().splitlines(), 1))  # (line number, text); \r\n is fine too
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not a text file: give the .model file written by bpe.py") from None
        reader = iter(lines)

        def next_line(what):
            try:
                return next(reader)
            except StopIteration:
                raise ValueError(f"{path} ends early: expected {what} after line {len(lines)}; the file is truncated,"
                                 " save the tokenizer again") from None

        def fail(number, line, what):
            raise ValueError(f"{path} line {number}: expected {what}, got {line[:80]!r}; the file is damaged, save the"
                             " tokenizer again")

        number, line = next_line("the header")
        if line != FORMAT:
            if line.startswith("nanoverse-bpe "):
                raise ValueError(f"{path} is a {line!r} file but this bpe.py reads {FORMAT!r}: retrain or re-save "
                                 "the tokenizer with this version")
            if path.endswith(".vocab") or regex.fullmatch(r"\[.*\] 0", line):  # save()'s listing for people
                raise ValueError(f"{path} is the human-readable .vocab listing, which cannot be loaded: pass the "
                                 f".model file written beside it ({Path(path).with_suffix('.model')})")
            raise ValueError(f"{path} is not a bpe.py .model file (it starts with {line[:40]!r}, not {FORMAT!r}): "
                             "pass the PREFIX.model file that `bpe.py train --out PREFIX` wrote")
        number, line = next_line("the pattern")
        try:
            assert line.startswith("pattern ")
            pattern = json.loads(line[len("pattern "):])
            assert pattern is None or isinstance(pattern, str)
            regex.compile(pattern or "")
        except (AssertionError, json.JSONDecodeError, regex.error):
            fail(number, line, 'pattern "<regex as JSON>"')
        number, line = next_line("the special-token count")
        count = _parse_count(line, "specials", number, fail)
        special_tokens, special_lines = {}, []
        for _ in range(count):
            number, line = next_line("a special token")
            try:
                text, token_id = line.rsplit(" ", 1)
                if not isinstance(json.loads(text), str):
                    raise ValueError("a special token is a JSON string")
                special_tokens[json.loads(text)] = int(token_id)
                special_lines.append((number, line, int(token_id)))
            except (ValueError, TypeError, json.JSONDecodeError):
                fail(number, line, '"<special token as JSON>" <id>')
        number, line = next_line("the byte ids")
        try:
            assert line.startswith("bytes ")
            byte_ids = [int(x) for x in line.split()[1:]]
            assert len(byte_ids) == 256 and len(set(byte_ids)) == 256
        except (AssertionError, ValueError):
            fail(number, line, "bytes followed by 256 distinct ids")
        number, line = next_line("the merge count")
        count = _parse_count(line, "merges", number, fail)
        merges, known, last = {}, set(byte_ids), -1
        for _ in range(count):
            number, line = next_line("a merge")
            try:
                left, right, new_id = (int(x) for x in line.split())
            except ValueError:
                fail(number, line, "three integers 'left right new_id'")
            if left not in known or right not in known or new_id in known or new_id <= last:
                fail(number, line, "a merge of two known ids into a new id larger than the previous merge's")
            merges[(left, right)] = new_id
            known.add(new_id)
            last = new_id
        for number, line in reader:
            fail(number, line, "the end of the file")
        for number, line, token_id in special_lines:
            if token_id in known:
                fail(number, line, "a special-token id that no byte and no merge uses")
        return cls(merges, pattern, special_tokens, byte_ids)

    # -- other tokenizers ----------------------------------------------------------------------------------------------

    @classmethod
    def from_gpt2_files(cls, encoder_json, vocab_bpe):
        """GPT-2's own tokenizer from its encoder.json (token -> id) and vocab.bpe (the merges, in order)."""
        with open(encoder_json, encoding="utf-8") as file:
            encoder = json.load(file)
        with open(vocab_bpe, encoding="utf-8") as file:
            merge_lines = file.read().split("\n")
        byte_to_char = bytes_to_unicode()
        byte_ids = [encoder[byte_to_char[byte]] for byte in range(256)]
        merges = {}
        for line in merge_lines[1:]:  # line 0 is "#version: 0.2"
            if line:
                left, right = line.split(" ")
                merges[(encoder[left], encoder[right])] = encoder[left + right]
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
    if not special_tokens:
        return [text]
    return _special_regex(special_tokens).split(text)[::2]


def _parse_count(line, keyword, number, fail):
    words = line.split()
    if len(words) != 2 or words[0] != keyword or not words[1].isdigit():
        fail(number, line, f"'{keyword} <count>'")
    return int(words[1])


def _write_atomic(path, content):
    """Write text or bytes to a temporary file beside `path`, then rename: a crash never leaves half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # A plain open() (not tempfile.mkstemp, which makes owner-only files) gives the usual permissions of the umask;
    # the process id keeps two runs writing the same file from sharing a temporary.
    temporary = os.path.join(folder, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        with open(temporary, "wb") as file:
            file.write(content.encode("utf-8") if isinstance(content, str) else content)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


# ----------------------------------------------------------------------------------------------------------------------
# Files: from the local mirror ($NANOVERSE_DATA), from the cache under data/, or downloaded once and checked.
# The cache is laid out like the mirror (data/tinyshakespeare/input.txt), the same place prepare_data.py uses, so one
# download serves every script.

DOWNLOADS = {  # path under the data folder -> (URL, sha256)
    "tinyshakespeare/input.txt": (
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
    "gpt2/encoder.json": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
    "gpt2/vocab.bpe": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
}


def data_file(name, cache_dir="data"):
    """Path of a known data file: $NANOVERSE_DATA/name, else cache_dir/name, else downloaded there (sha256 checked)."""
    mirror = os.environ.get("NANOVERSE_DATA")
    if mirror and (Path(mirror) / name).is_file():
        return Path(mirror) / name
    target = Path(cache_dir) / name
    url, sha256 = DOWNLOADS[name]
    # A cached copy is checked on every use: a download cut short or a file edited by hand is fetched again.
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == sha256:
        return target
    data = bytearray()
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {name}") as bar:
                while block := response.read(1 << 16):
                    data += block
                    bar.update(len(block))
    except OSError as error:
        problem = (f"the cached {target} is damaged (sha256 mismatch) and a fresh copy could not be downloaded "
                   f"from {url} ({error})" if target.is_file() else f"could not download {url} ({error})")
        raise RuntimeError(f"{problem}; without a network, put the original file at {target} or set NANOVERSE_DATA "
                           f"to a folder holding {name}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise RuntimeError(f"the download of {url} is corrupt (sha256 {digest[:12]}..., expected {sha256[:12]}...); "
                           "try again")
    _write_atomic(target, bytes(data))
    return target


def gpt2_tokenizer(cache_dir="data"):
    """GPT-2's tokenizer from its two files (local copy or one download)."""
    return Tokenizer.from_gpt2_files(data_file("gpt2/encoder.json", cache_dir), data_file("gpt2/vocab.bpe", cache_dir))


# ----------------------------------------------------------------------------------------------------------------------
# Seeing it work.

COLOURS = [41, 42, 43, 44, 45, 46]  # ANSI background colours, cycled so that neighbouring tokens differ


def show(tokenizer, text, color=True):
    """The tokens of `text` with visible boundaries, then their ids."""
    ids = tokenizer.encode(text, allowed_special="all")
    pieces = [render(tokenizer.vocab[i]) for i in ids]
    if color:
        shown = "".join(f"\x1b[30;{COLOURS[k % len(COLOURS)]}m{piece}\x1b[0m" for k, piece in enumerate(pieces))
    else:
        shown = "|".join(pieces)
    return [shown, f"{len(ids)} tokens for {len(text.encode('utf-8'))} bytes: {ids}"]


# ----------------------------------------------------------------------------------------------------------------------
# Command line.


def _load_model(name):
    if name == "gpt2":
        return gpt2_tokenizer()
    if not Path(name).is_file():
        raise ValueError(f"no model file {name}: train one with `python bpe.py train --out PREFIX` and pass "
                         "--model PREFIX.model (or --model gpt2)")
    return Tokenizer.load(name)


def _read_text(path):
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # -sig: a leading byte order mark is not part of the text
    except FileNotFoundError:
        raise ValueError(f"input file {path} does not exist: check the path") from None
    except IsADirectoryError:
        raise ValueError(f"input {path} is a folder: give one text file (join several with `cat`)") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"input file {path} is not UTF-8 text (byte {error.start}): convert it to UTF-8") from None
    if text.count("\x00") > max(1, len(text) // 100):  # a token file of small ids is valid UTF-8, but not text
        raise ValueError(f"input file {path} is full of NUL bytes, so it is binary (a token file?), not text: pass the "
                         f"text file it was made from")
    return text


def run(config, words):
    """Carry out one command; `words` are the positional arguments (text to encode / show, ids to decode)."""
    if config.command == "train":
        try:  # find out before training, not after, that the model cannot be written
            Path(config.out).parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"cannot create the folder of --out {config.out} ({error.strerror}): choose a prefix in "
                             f"a folder you can write to") from None
        text = _read_text(config.input or data_file("tinyshakespeare/input.txt"))
        tokenizer = Tokenizer.train(text, config.vocab_size, config.pattern, config.special, config.verbose)
        tokenizer.save(config.out)
        if config.verbose:
            ids = tokenizer.encode(text, allowed_special="all")
            print(f"{tokenizer.vocab_size} tokens ({len(tokenizer.merges)} merges, specials "
                  f"{list(tokenizer.special_tokens)}); the text is {len(text.encode('utf-8')):,} bytes -> "
                  f"{len(ids):,} tokens, {len(text.encode('utf-8')) / max(len(ids), 1):.2f} bytes per token")
            last = list(tokenizer.merges.items())[-5:]
            print("last merges: " + ", ".join(f"[{render(tokenizer.vocab[a])}]+[{render(tokenizer.vocab[b])}]"
                                              for (a, b), _ in last))
            print(f"wrote {config.out}.model and {config.out}.vocab")
            for line in show(tokenizer, text[:80].strip() or text[:80], config.color and sys.stdout.isatty()):
                print(line)
        return tokenizer
    tokenizer = _load_model(config.model)
    if config.command == "decode":
        try:
            ids = [int(word) for word in " ".join(words).replace(",", " ").split()]
        except ValueError:
            raise ValueError("decode takes token ids as integers, e.g. `python bpe.py decode --model M 464 3290`") \
                from None
        if not ids:
            raise ValueError("decode needs some token ids: `python bpe.py decode --model M 464 3290`")
        print(tokenizer.decode(ids))
        return ids
    text = " ".join(words) if words else (_read_text(config.input) if config.input else "")
    if not text and not config.explain:
        raise ValueError(f"{config.command} needs some text: `python bpe.py {config.command} --model M \"some text\"`"
                         " (or --input FILE)")
    if config.command == "encode":
        ids = tokenizer.encode(text, allowed_special="all")
        print(" ".join(map(str, ids)))
        return ids
    if text:
        for line in show(tokenizer, text, config.color and sys.stdout.isatty()):
            print(line)
    if config.explain:
        for line in tokenizer.explain(config.explain):
            print(line)
    return tokenizer


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train, use and inspect a byte-level BPE tokenizer.",
                                     allow_abbrev=False)  # a misspelled flag is an error, never a guess
    comments = _field_comments()
    for item in fields(Config):
        default = getattr(Config(), item.name)
        if item.name != "command" and default not in ("", ()):
            comments[item.name] += f" (default: {' '.join(default) if isinstance(default, tuple) else default})"
        comments[item.name] = comments[item.name].replace("%", "%%")  # argparse formats help strings with %
        if item.name == "command":
            parser.add_argument("command", nargs="?", default=default, choices=["train", "encode", "decode", "show"],
                                help=comments[item.name])
        elif isinstance(default, bool):
            parser.add_argument(f"--{item.name}", default=default, action=argparse.BooleanOptionalAction,
                                help=comments[item.name])
        elif isinstance(default, tuple):
            parser.add_argument(f"--{item.name}", default=default, nargs="*", help=comments[item.name])
        else:
            parser.add_argument(f"--{item.name}", default=default, type=type(default), help=comments[item.name])
    parser.add_argument("words", nargs="*", help="show / encode: the text; decode: the ids")
    argv = _without_notebook_arguments(sys.argv[1:] if argv is None else argv)
    args, unknown = parser.parse_known_intermixed_args(argv)  # options and text in any order
    if unknown:  # a flag that trains the default tokenizer instead of the one asked for must not pass silently
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (see --help for the options)")
    words = args.__dict__.pop("words")
    if words and args.command == "train":
        parser.error(f"train reads its text from --input FILE, not from the command line: remove {' '.join(words)!r}")
    config = Config(**vars(args))
    try:
        return run(config, words)
    except (ValueError, RuntimeError, OSError) as error:
        raise SystemExit(f"bpe.py: {error}") from None


def _field_comments():
    """The one-line comment after each Config field, used as its --help text."""
    import inspect

    comments = defaultdict(str)
    try:
        source = inspect.getsource(Config)
    except (OSError, TypeError):  # source not available (e.g. run through exec): no help text, still works
        return comments
    for line in source.splitlines():
        name, _, rest = line.strip().partition(":")
        if "#" in rest:
            comments[name] = rest.split("#", 1)[1].strip()
    return comments


def _without_notebook_arguments(arguments):
    """Drop the `-f kernel.json` that Jupyter and Colab put in sys.argv, so a pasted cell runs with the defaults.

    Exactly that one pair goes, before parsing (the file name would otherwise be read as the command); any other
    unknown flag is left for the parser to name.
    """
    arguments = list(arguments)
    if "-f" in arguments[:-1]:
        index = arguments.index("-f")
        del arguments[index:index + 2]
    return arguments


# %% Run
if __name__ == "__main__":
    main()
