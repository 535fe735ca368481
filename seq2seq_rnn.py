"""Character-level sequence-to-sequence transliteration: an RNN, GRU or LSTM encoder-decoder with attention.

Type Hindi in Latin letters ("namaste") and get Devanagari ("नमस्ते"). An encoder RNN reads the input characters, a
decoder RNN writes the output characters one at a time, starting from the encoder's final state and (optionally)
looking back at every input character through attention. Trained on Google's Dakshina romanization lexicons.

References:
  Sutskever, Vinyals, Le 2014, "Sequence to Sequence Learning with Neural Networks", https://arxiv.org/abs/1409.3215
  Bahdanau, Cho, Bengio 2015 (additive attention), https://arxiv.org/abs/1409.0473
  Luong, Pham, Manning 2015 (dot attention, attentional hidden state, eq. 5-8, input feeding section 3.3),
  https://arxiv.org/abs/1508.04025
  Roark et al. 2020, "Processing South Asian Languages Written in the Latin Script: the Dakshina Dataset",
  https://arxiv.org/abs/2007.01176 (data: https://github.com/google-research-datasets/dakshina)

Run:
  # CPU (2 cores, 8-15 minutes): Hindi romanized -> Devanagari, about 48% dev word accuracy with beam search
  python seq2seq_rnn.py --lang hi --max_minutes 20
  # CPU, 20 minutes, about 50% (50.1-50.5% where the CPU computes bfloat16): three models at once, one process each
  # sharing the 2 cores (left-to-right and right-to-left decoders), then the three as an ensemble; download the data
  # first, or each run would:
  python -c "import seq2seq_rnn as s; s.lexicon_path(s.Config(lang='hi'), 'train')"
  python seq2seq_rnn.py --max_minutes 20 --lr_schedule linear --threads 1 --seed 1 --out_dir out-hi/a &
  python seq2seq_rnn.py --max_minutes 20 --lr_schedule linear --threads 1 --seed 1 --reverse_output --out_dir out-hi/b &
  python seq2seq_rnn.py --max_minutes 20 --lr_schedule linear --threads 1 --seed 2 --out_dir out-hi/c &
  wait
  python seq2seq_rnn.py --evaluate dev --out_dir out-hi \
    --checkpoint out-hi/a/best.pt,out-hi/b/best.pt,out-hi/c/best.pt
  # GPU
  python seq2seq_rnn.py --lang hi --device cuda
  # Colab: paste this file into a cell and run it (defaults), or: !python seq2seq_rnn.py --lang hi --device cuda
  # then
  python seq2seq_rnn.py --evaluate test --checkpoint out-seq2seq/best.pt
  python seq2seq_rnn.py --translit "namaste duniya" --checkpoint out-seq2seq/best.pt
"""

import argparse
import copy
import dataclasses
import hashlib
import inspect
import json
import math
import os
import re
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence
from tqdm import tqdm


@dataclass
class Config:
    # data
    lang: str = "hi"  # Dakshina language: bn gu hi kn ml mr pa sd si ta te ur
    direction: str = "roman2native"  # roman2native (Latin letters in, native script out) or native2roman
    data_dir: str = ""  # folder with the lexicons; empty: $NANOVERSE_DATA/dakshina, then data/dakshina, then download
    max_train_rows: int = 0  # train on the first N rows only (0 = all); for quick experiments and tests
    max_dev_rows: int = 0  # evaluate on the first N dev rows only (0 = all)
    # model
    cell: str = "lstm"  # recurrent cell of encoder and decoder: rnn (tanh), gru or lstm
    embedding_size: int = 64  # size of the character embeddings
    hidden_size: int = 256  # size of the recurrent state (per direction)
    encoder_layers: int = 1  # stacked recurrent layers in the encoder
    decoder_layers: int = 1  # stacked recurrent layers in the decoder
    bidirectional: bool = True  # encoder reads the word both ways
    dropout: float = 0.2  # dropout on embeddings, between layers and before the output layer
    attention: str = "dot"  # none, dot (Luong) or additive (Bahdanau)
    input_feeding: bool = False  # each decoder step also reads the previous step's attentional state (needs attention)
    reverse_output: bool = False  # the decoder writes each output word backwards, last character first
    # training
    epochs: int = 40  # most passes over the training split
    batch_size: int = 64  # words per step
    learning_rate: float = 2e-3  # Adam step size
    lr_schedule: str = "plateau"  # plateau (cut by lr_decay after an epoch without a better dev accuracy) or linear
    lr_decay: float = 0.5  # plateau schedule: multiply the learning rate by this after an epoch that does not improve
    teacher_forcing: float = 1.0  # probability of feeding the reference character (not the model's guess) per step
    label_smoothing: float = 0.1  # train towards (1 - this) * one-hot + this * uniform over all output symbols
    grad_clip: float = 1.0  # clip the gradient norm to this (0 = off)
    average_decay: float = 0.999  # keep a moving average of the weights (decay per step; 0 = off) for dev and best.pt
    patience: int = 5  # stop after this many epochs without a better dev accuracy
    max_minutes: float = 0.0  # stop before an epoch would push total training time (all resumes) past this (0 = off)
    resume: bool = False  # continue from out_dir/last.pt
    seed: int = 1337  # seed for initialization, batch order, dropout and teacher forcing
    # decoding and evaluation
    beam_size: int = 5  # hypotheses kept by beam search (1 = greedy)
    length_penalty: float = 0.5  # rank hypotheses by log-probability / length**length_penalty
    max_output_length: int = 40  # longest output word, in characters
    checkpoint: str = ""  # checkpoint for --evaluate and --translit (default: out_dir/best.pt); a,b: an ensemble
    evaluate: str = ""  # score this lexicon file (or train, dev, test: that split of the checkpoint's language)
    translit: str = ""  # transliterate these space-separated words with --checkpoint and print the top candidates
    heatmaps: int = 4  # words to draw attention heatmaps for
    # system
    out_dir: str = "out-seq2seq"  # checkpoints, log.jsonl, predictions-dev.tsv and attention-dev.png go here
    device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda, mps
    threads: int = 0  # CPU threads for torch (0 = one per core)
    precision: str = "auto"  # training's products: float32, bfloat16 (autocast), auto (bfloat16 on a CPU that has it)


PAD, SOS, EOS, UNK = 0, 1, 2, 3
SPECIAL_TOKENS = ["<pad>", "<sos>", "<eos>", "<unk>"]
CHECKPOINT_FORMAT = "nanoverse-seq2seq-rnn-v1"
# Fields that fix the shape of the network: a checkpoint can only be loaded into a model built with the same values.
MODEL_FIELDS = ("lang", "direction", "cell", "embedding_size", "hidden_size", "encoder_layers", "decoder_layers",
                "bidirectional", "attention", "input_feeding", "reverse_output")
# What a checkpoint saved before a field existed was trained with; pinned here, not read from Config, so that a later
# change of a default cannot make old checkpoints build the wrong model.
OLDER_CHECKPOINT_VALUES = {"input_feeding": False, "reverse_output": False}
# What a resumed run reads, unless given again: the data of the run it continues.
RESUMED_DATA_FIELDS = ("lang", "direction", "data_dir", "max_train_rows", "max_dev_rows")

# ----------------------------------------------------------------------------------------------------------------------
# Model: recurrent layers, encoder, bridge (encoder state -> decoder state), attention, decoder, the whole model.


def make_rnn(cell, input_size, hidden_size, num_layers, dropout, bidirectional=False):
    rnn_class = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cell]
    # PyTorch applies this dropout between stacked layers only, so it means nothing for a single layer.
    return rnn_class(input_size, hidden_size, num_layers, batch_first=True, bidirectional=bidirectional,
                     dropout=dropout if num_layers > 1 else 0.0)


class Encoder(nn.Module):
    def __init__(self, config, vocab_size):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, config.embedding_size, padding_idx=PAD)
        self.rnn = make_rnn(config.cell, config.embedding_size, config.hidden_size, config.encoder_layers,
                            config.dropout, config.bidirectional)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, source, source_lengths):
        embedded = self.dropout(self.embedding(source))  # (B, S, E)
        # Packing makes the RNN stop at each word's last real character: without it the final state (and, for the
        # backward direction, every output) would have read the padding too.
        packed = pack_padded_sequence(embedded, source_lengths.cpu(), batch_first=True, enforce_sorted=False)
        packed_outputs, final_state = self.rnn(packed)
        outputs, _ = pad_packed_sequence(packed_outputs, batch_first=True, total_length=source.size(1))
        return outputs, final_state  # (B, S, directions * H), (layers * directions, B, H) [a pair for the LSTM]


class Bridge(nn.Module):
    """Turns the encoder's final state into the decoder's initial state.

    PyTorch stacks the final states as (layers * directions, B, H), layer by layer, forward before backward. With a
    bidirectional encoder each layer's two directions are concatenated and projected back to H (Bahdanau et al.
    initialize from the backward state through tanh; we use both). When the layer counts differ, decoder layer i
    starts from encoder layer min(i + max(encoder_layers - decoder_layers, 0), encoder_layers - 1): a shallower
    decoder takes the top encoder layers, a deeper one repeats the top encoder layer.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        directions = 2 if config.bidirectional else 1
        self.hidden_projection = nn.Linear(2 * config.hidden_size, config.hidden_size) if directions == 2 else None
        self.cell_projection = (nn.Linear(2 * config.hidden_size, config.hidden_size)
                                if directions == 2 and config.cell == "lstm" else None)
        offset = max(config.encoder_layers - config.decoder_layers, 0)
        self.layer_for_decoder = [min(i + offset, config.encoder_layers - 1) for i in range(config.decoder_layers)]

    def convert(self, state, projection, activation):
        layers, batch_size, hidden_size = self.config.encoder_layers, state.size(1), state.size(2)
        if projection is not None:
            state = state.view(layers, 2, batch_size, hidden_size)
            state = activation(projection(torch.cat([state[:, 0], state[:, 1]], dim=-1)))  # (layers, B, H)
        return state[self.layer_for_decoder].contiguous()  # (decoder_layers, B, H)

    def forward(self, final_state):
        if self.config.cell == "lstm":  # the LSTM carries a hidden state h and a memory cell c; c is not squashed
            hidden, memory_cell = final_state
            return (self.convert(hidden, self.hidden_projection, torch.tanh),
                    self.convert(memory_cell, self.cell_projection, lambda x: x))
        return self.convert(final_state, self.hidden_projection, torch.tanh)


class Attention(nn.Module):
    """Scores every input position for every decoder step, softmax over the real (unpadded) positions.

    dot (Luong et al. 2015, eq. 8): score = h_t . m_s. additive (Bahdanau et al. 2015, appendix A.1.2, Luong's
    "concat"): score = v . tanh(W h_t + U m_s). Here both score the decoder's current output h_t (Luong's order), so a
    whole teacher-forced target can go through the decoder RNN in one call (unless input feeding, see Decoder).
    """

    def __init__(self, kind, hidden_size):
        super().__init__()
        self.kind = kind
        if kind == "additive":
            self.query_projection = nn.Linear(hidden_size, hidden_size, bias=False)
            self.key_projection = nn.Linear(hidden_size, hidden_size)
            self.energy = nn.Linear(hidden_size, 1, bias=False)

    def keys(self, memory):
        """What the scores compare against; computed once per input word, not once per decoder step."""
        return self.key_projection(memory) if self.kind == "additive" else memory

    def forward(self, queries, keys, memory, memory_mask):
        # queries (B, T, H), keys and memory (B, S, H), memory_mask (B, S) True at real characters
        if self.kind == "dot":
            scores = queries @ keys.transpose(1, 2)  # (B, T, S)
        else:
            scores = self.energy(torch.tanh(self.query_projection(queries).unsqueeze(2) + keys.unsqueeze(1)))
            scores = scores.squeeze(-1)  # (B, T, S)
        scores = scores.masked_fill(~memory_mask.unsqueeze(1), float("-inf"))  # padding gets exactly zero weight
        weights = scores.softmax(dim=-1)
        return weights @ memory, weights  # context (B, T, H), weights (B, T, S)


class Decoder(nn.Module):
    def __init__(self, config, vocab_size):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, config.embedding_size, padding_idx=PAD)
        self.input_feeding = config.input_feeding
        if config.input_feeding and config.attention == "none":
            raise ValueError("input feeding feeds the attentional state back, so it needs attention (dot or additive)")
        rnn_input_size = config.embedding_size + (config.hidden_size if config.input_feeding else 0)
        self.rnn = make_rnn(config.cell, rnn_input_size, config.hidden_size, config.decoder_layers, config.dropout)
        self.attention = Attention(config.attention, config.hidden_size) if config.attention != "none" else None
        # Luong eq. 5: the attentional hidden state tanh(W_c [context; h_t]) feeds the output layer.
        self.combine = nn.Linear(2 * config.hidden_size, config.hidden_size) if self.attention else None
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(config.hidden_size, vocab_size)

    def attend(self, outputs, memory, keys, memory_mask):
        if self.attention is None:
            return outputs, None
        context, weights = self.attention(outputs, keys, memory, memory_mask)
        return torch.tanh(self.combine(torch.cat([context, outputs], dim=-1))), weights

    def forward(self, previous_tokens, state, memory, keys, memory_mask):
        """Runs T steps. Teacher forcing knows every input in advance (T = target length); free-running decoding
        feeds back its own guesses, one step at a time (T = 1)."""
        embedded = self.dropout(self.embedding(previous_tokens))  # (B, T, E)
        if not self.input_feeding:  # the RNN never needs attention's result: the whole target in one call
            outputs, state = self.rnn(embedded, state)  # (B, T, H)
            outputs, weights = self.attend(outputs, memory, keys, memory_mask)
        else:
            # Input feeding (Luong et al. 2015, section 3.3): step t's RNN input is its character together with the
            # attentional state of step t - 1, so the RNN knows where it looked last (the next character of a
            # transliteration usually comes from just after it). The state carries that vector as a (1, B, H) tensor,
            # batch in dim 1 like the RNN's own state, so beam search picks its rows the same way (select_state).
            # The price is a Python loop over the T steps.
            rnn_state, feed = state
            outputs, weights = [], []
            for t in range(embedded.size(1)):
                output, rnn_state = self.rnn(torch.cat([embedded[:, t:t + 1], feed.transpose(0, 1)], dim=-1),
                                             rnn_state)
                output, step_weights = self.attend(output, memory, keys, memory_mask)  # (B, 1, H), (B, 1, S)
                feed = output.transpose(0, 1)
                outputs.append(output)
                weights.append(step_weights)
            outputs, weights, state = torch.cat(outputs, dim=1), torch.cat(weights, dim=1), (rnn_state, feed)
        logits = self.output(self.dropout(outputs))  # (B, T, V); the softmax is inside the loss / log_softmax
        return logits, state, weights


class Seq2Seq(nn.Module):
    def __init__(self, config, source_vocab_size, target_vocab_size):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config, source_vocab_size)
        self.bridge = Bridge(config)
        # A bidirectional encoder's outputs are 2H wide; project them to H so that attention can compare them with
        # the decoder's H-wide state. Without attention the decoder sees only the bridged final state.
        self.memory_projection = (nn.Linear(2 * config.hidden_size, config.hidden_size)
                                  if config.bidirectional and config.attention != "none" else nn.Identity())
        self.decoder = Decoder(config, target_vocab_size)

    def encode(self, source, source_lengths):
        outputs, final_state = self.encoder(source, source_lengths)
        memory = self.memory_projection(outputs)  # (B, S, H)
        memory_mask = torch.arange(source.size(1), device=source.device)[None, :] < source_lengths[:, None]
        keys = self.decoder.attention.keys(memory) if self.decoder.attention is not None else None
        state = self.bridge(final_state)
        if self.config.input_feeding:  # before the first step there is no attentional state yet: zeros
            state = (state, memory.new_zeros(1, source.size(0), self.config.hidden_size))
        return memory, keys, memory_mask, state

    def forward(self, source, source_lengths, target_inputs, teacher_forcing=1.0):
        memory, keys, memory_mask, state = self.encode(source, source_lengths)
        if teacher_forcing >= 1.0:  # every decoder input is the reference: run the whole target in one call
            return self.decoder(target_inputs, state, memory, keys, memory_mask)[0]
        # A fixed-rate form of scheduled sampling (Bengio et al. 2015, https://arxiv.org/abs/1506.03099, lower the rate
        # during training): per word and step, feed the reference with probability teacher_forcing, else the model's
        # own best guess, as at test time.
        tokens, all_logits = target_inputs[:, :1], []
        for step in range(target_inputs.size(1)):
            logits, state, _ = self.decoder(tokens, state, memory, keys, memory_mask)
            all_logits.append(logits)
            if step + 1 < target_inputs.size(1):
                use_reference = torch.rand(tokens.shape, device=tokens.device) < teacher_forcing
                tokens = torch.where(use_reference, target_inputs[:, step + 1:step + 2], logits.argmax(-1))
        return torch.cat(all_logits, dim=1)


def sequence_loss(logits, targets, label_smoothing=0.0):
    """Mean cross-entropy over the real target characters; padded positions are ignored."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=PAD,
                           label_smoothing=label_smoothing)


def select_state(state, rows):
    """Picks rows of the decoder state (dim 1) for beam search; the LSTM state is a pair, and input feeding pairs the
    RNN state with the last attentional state."""
    if isinstance(state, tuple):
        return tuple(select_state(s, rows) for s in state)
    return state.index_select(1, rows)


@torch.no_grad()
def greedy_decode(model, source, source_lengths, max_length):
    """Feeds back the most likely character until every word has written <eos>. Returns ids, attention and each
    output's log-probability (summed over its characters and <eos>)."""
    memory, keys, memory_mask, state = model.encode(source, source_lengths)
    tokens = torch.full((source.size(0), 1), SOS, dtype=torch.long, device=source.device)
    finished = torch.zeros(source.size(0), dtype=torch.bool, device=source.device)
    log_probs = torch.zeros(source.size(0), device=source.device)
    outputs, attention = [], []
    for _ in range(max_length):
        logits, state, weights = model.decoder(tokens, state, memory, keys, memory_mask)
        step_log_probs, tokens = logits[:, -1].float().log_softmax(-1).max(-1, keepdim=True)
        log_probs += step_log_probs[:, 0].masked_fill(finished, 0.0)
        tokens = tokens.masked_fill(finished[:, None], PAD)
        outputs.append(tokens)
        attention.append(weights)
        finished |= tokens[:, 0] == EOS
        if finished.all():
            break
    weights = torch.cat(attention, dim=1) if attention[0] is not None else None
    return torch.cat(outputs, dim=1), weights, log_probs  # (B, T), (B, T, S) or None, (B,)


@torch.no_grad()
def beam_search(model, source, source_lengths, beam_size, max_length, length_penalty=0.5):
    """Keeps the beam_size best partial outputs per word, all words of the batch at once (B * K decoder rows).

    Hypotheses are ranked by log P(y) / len(y)**length_penalty (len counts <eos>) so that longer words are not
    punished just for having more factors below 1: the simpler len**alpha form of the length normalisation of Wu et
    al. 2016, section 7 (https://arxiv.org/abs/1609.08144), who divide by ((5 + len) / 6)**alpha.
    Returns ids (B, K, T) and normalised scores (B, K), best first, and the raw log-probabilities (B, K).
    """
    batch_size, K = source.size(0), beam_size
    memory, keys, memory_mask, state = model.encode(source, source_lengths)
    memory, memory_mask = memory.repeat_interleave(K, 0), memory_mask.repeat_interleave(K, 0)
    keys = keys.repeat_interleave(K, 0) if keys is not None else None
    state = select_state(state, torch.arange(batch_size, device=source.device).repeat_interleave(K))
    tokens = torch.full((batch_size * K, 1), SOS, dtype=torch.long, device=source.device)
    sequences = tokens[:, :0]
    # At the start all K copies are the same; only the first is live, so the first step picks K different characters.
    log_probs = torch.full((batch_size, K), float("-inf"), device=source.device)
    log_probs[:, 0] = 0.0
    lengths = torch.zeros(batch_size, K, device=source.device)
    finished = torch.zeros(batch_size, K, dtype=torch.bool, device=source.device)
    first_row = (torch.arange(batch_size, device=source.device) * K)[:, None]  # (B, 1)
    for _ in range(max_length):
        logits, state, _ = model.decoder(tokens, state, memory, keys, memory_mask)
        step_log_probs = logits[:, -1].float().log_softmax(-1).view(batch_size, K, -1)  # (B, K, V)
        # A finished hypothesis can only be extended by <pad> at no cost: it keeps its score and its length.
        pad_only = torch.full_like(step_log_probs[0, 0], float("-inf"))
        pad_only[PAD] = 0.0
        step_log_probs = torch.where(finished[..., None], pad_only, step_log_probs)
        candidate_log_probs = log_probs[..., None] + step_log_probs  # (B, K, V)
        candidate_lengths = lengths + (~finished).float()  # (B, K)
        scores = candidate_log_probs / candidate_lengths[..., None] ** length_penalty
        best = scores.view(batch_size, -1).topk(K, dim=-1).indices  # (B, K) into the flattened K * V candidates
        origin, token = best // step_log_probs.size(-1), best % step_log_probs.size(-1)
        log_probs = candidate_log_probs.view(batch_size, -1).gather(1, best)
        lengths = candidate_lengths.gather(1, origin)
        finished = finished.gather(1, origin) | (token == EOS)
        rows = (first_row + origin).view(-1)
        sequences = torch.cat([sequences[rows], token.view(-1, 1)], dim=1)
        state = select_state(state, rows)
        tokens = token.view(-1, 1)
        if finished.all():
            break
    scores = log_probs / lengths.clamp(min=1) ** length_penalty
    order = scores.argsort(dim=1, descending=True)
    sequences = sequences.view(batch_size, K, -1).gather(1, order[..., None].expand(-1, -1, sequences.size(1)))
    return sequences, scores.gather(1, order), log_probs.gather(1, order)


# ----------------------------------------------------------------------------------------------------------------------
# Data: the Dakshina lexicons, character vocabularies, padded batches sorted by length.

LANGUAGES = ("bn", "gu", "hi", "kn", "ml", "mr", "pa", "sd", "si", "ta", "te", "ur")
DAKSHINA_URL = "https://storage.googleapis.com/gresearch/dakshina/dakshina_dataset_v1.0.tar"
# sha256 of the lexicons we have checked copies of; other languages are used as the archive gives them.
LEXICON_SHA256 = {
    "bn.translit.sampled.dev.tsv": "5d85422446dc80129506d8b21657b9283c6fb437ff90292eb62ca24aafb3e525",
    "bn.translit.sampled.train.tsv": "1ebdb9991d66315af330123e7ca7d72ed9ceef6c93ec353dc0f947046415fa04",
    "hi.translit.sampled.dev.tsv": "62019ba0e046ceffd7211a2797daf2d2970da77586ee056dcecaa34c38392bce",
    "hi.translit.sampled.train.tsv": "4b3f872d3363a91f949dfb640acab6a968ed7d2d65829a22af662c3e99ef7803",
    "ta.translit.sampled.dev.tsv": "c5bb92e01c7a2a1d1b8d18463d690519a8100fa14dbde7b38ea3e366df7a0bf8",
    "ta.translit.sampled.train.tsv": "085760e523562b46103b16cfb60a0fd2c5c703bc93e57d9ed2e949e428d172b1",
}


def read_lexicon(path, direction):
    """Reads `native<TAB>romanized<TAB>count` lines into (input, output) pairs, one per line."""
    pairs = []
    try:
        with open(path, encoding="utf-8-sig") as file:  # -sig: a byte order mark is not part of the first word
            for line_number, line in enumerate(file, 1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                columns = line.split("\t")
                if len(columns) not in (2, 3):
                    raise SystemExit(f"line {line_number} of {path} has {len(columns)} tab-separated column(s) "
                                     f"{columns[:6]!r}; a lexicon line is native<TAB>romanized[<TAB>count].")
                if not columns[0].strip() or not columns[1].strip():
                    empty = "native" if not columns[0].strip() else "romanized"
                    raise SystemExit(f"line {line_number} of {path} has an empty {empty} column; every line needs "
                                     f"both words.")
                if len(columns) == 3 and not columns[2].strip().isdigit():
                    fix = "a lexicon has no header line, so remove it" if line_number == 1 else "fix or delete it"
                    raise SystemExit(f"line {line_number} of {path} has {columns[2]!r} as its count, not a whole "
                                     f"number; {fix}.")
                native, roman = columns[0].strip(), columns[1].strip()
                pairs.append((roman, native) if direction == "roman2native" else (native, roman))
    except UnicodeDecodeError:
        raise SystemExit(f"{path} is not UTF-8 text; save the lexicon as UTF-8 and try again.")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise SystemExit(f"there is no lexicon file at {path}; give the path of a .tsv file, or train, dev or test "
                         f"for that split of --lang.")
    if not pairs:
        raise SystemExit(f"{path} has no lexicon lines; give a file with native<TAB>romanized<TAB>count lines.")
    return pairs


def download_dakshina(lang, cache_dir):
    """Downloads the Dakshina archive once into cache_dir and extracts only this language's lexicons."""
    archive = cache_dir / "dakshina_dataset_v1.0.tar"
    if not archive.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = archive.with_name(f"{archive.name}.{os.getpid()}.part")  # per process: runs may start together
        print(f"downloading {DAKSHINA_URL} (about 2 GB, once) to {archive}")
        try:
            with urllib.request.urlopen(DAKSHINA_URL, timeout=60) as response, open(partial, "wb") as file:
                total = int(response.headers.get("Content-Length", 0)) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc="dakshina") as bar:
                    while chunk := response.read(1 << 20):
                        file.write(chunk)
                        bar.update(len(chunk))
            # A connection that closes early ends the loop quietly: count the bytes, or a cut-off archive would be
            # kept under the final name and fail every later run.
            if total is not None and partial.stat().st_size != total:
                raise OSError(f"got {partial.stat().st_size:,} of {total:,} bytes")
        except (urllib.error.URLError, OSError) as error:
            partial.unlink(missing_ok=True)  # never leave a 2 GB fragment behind
            raise SystemExit(f"could not download the Dakshina dataset ({error}); run again, or fetch "
                             f"{DAKSHINA_URL} yourself, unpack it and pass --data_dir FOLDER (or set NANOVERSE_DATA).")
        os.replace(partial, archive)
    try:
        with tarfile.open(archive) as tar:
            names = [f"{lang}.translit.sampled.{split}.tsv" for split in ("train", "dev", "test")]
            lexicons = {name: tar.extractfile(f"dakshina_dataset_v1.0/{lang}/lexicons/{name}").read() for name in names}
    except (tarfile.TarError, OSError) as error:  # damaged or cut short
        raise SystemExit(f"could not read {archive} ({type(error).__name__}), so it is damaged or cut short; delete "
                         f"that file and run again to download it afresh.")
    except KeyError:  # a readable tar without this language's lexicons
        raise SystemExit(f"{archive} has no {lang} lexicons, so it is not the Dakshina archive; delete that file and "
                         f"run again to download it afresh.")
    for name, data in lexicons.items():
        if name in LEXICON_SHA256 and hashlib.sha256(data).hexdigest() != LEXICON_SHA256[name]:
            raise SystemExit(f"{name} in {archive} has the wrong sha256; delete the archive and run again.")
        write_atomically(cache_dir / lang / name, data)


def lexicon_path(config, split):
    """Finds <lang>.translit.sampled.<split>.tsv in the mirror layout or the archive's layout."""
    name = f"{config.lang}.translit.sampled.{split}.tsv"
    layouts = [Path(config.lang) / name, Path("dakshina_dataset_v1.0") / config.lang / "lexicons" / name,
               Path(config.lang) / "lexicons" / name]
    if config.data_dir:
        for layout in layouts:
            if (Path(config.data_dir) / layout).is_file():
                return Path(config.data_dir) / layout
        raise SystemExit(f"found no {name} in --data_dir {config.data_dir}; expected {config.data_dir}/{layouts[0]} "
                         f"or {config.data_dir}/{layouts[1]}.")
    folders = [Path(os.environ["NANOVERSE_DATA"]) / "dakshina"] if os.environ.get("NANOVERSE_DATA") else []
    folders.append(Path("data") / "dakshina")
    for folder in folders:
        for layout in layouts:
            if (folder / layout).is_file():
                return folder / layout
    for folder in folders:  # a partial copy (the test mirror has train and dev only): say so rather than download
        train_layouts = [Path(str(layout).replace(f".{split}.", ".train.")) for layout in layouts]
        if split != "train" and any((folder / layout).is_file() for layout in train_layouts):
            raise SystemExit(f"{folder} has the {config.lang} training lexicon but no {name}; evaluate another split "
                             f"or a .tsv file, or pass --data_dir with a folder that has it.")
    download_dakshina(config.lang, Path("data") / "dakshina")
    return Path("data") / "dakshina" / layouts[0]


def build_vocabulary(words):
    """Special tokens, then every character of the training words in sorted order."""
    return SPECIAL_TOKENS + sorted(set("".join(words)))


def encode_word(word, stoi):
    return [stoi.get(character, UNK) for character in word]  # a character never seen in training becomes <unk>


def decode_ids(ids, itos):
    characters = []
    for i in ids:
        if i == EOS or i == PAD:
            break
        characters.append(itos[i] if i >= len(SPECIAL_TOKENS) else "?")
    return "".join(characters)


def make_batch(pairs, source_stoi, target_stoi, device):
    """Pads a list of (input, output) words into tensors: source (B, S), lengths (B,), decoder inputs and targets."""
    sources = [torch.tensor(encode_word(source, source_stoi), dtype=torch.long) for source, _ in pairs]
    targets = [torch.tensor(encode_word(target, target_stoi), dtype=torch.long) for _, target in pairs]
    source = pad_sequence(sources, batch_first=True, padding_value=PAD)
    lengths = torch.tensor([len(s) for s in sources])
    # Teacher forcing: the decoder reads <sos> y1 .. yn and must predict y1 .. yn <eos>.
    target_inputs = pad_sequence([F.pad(t, (1, 0), value=SOS) for t in targets], batch_first=True, padding_value=PAD)
    target_outputs = pad_sequence([F.pad(t, (0, 1), value=EOS) for t in targets], batch_first=True, padding_value=PAD)
    return source.to(device), lengths.to(device), target_inputs.to(device), target_outputs.to(device)


def batches_by_length(pairs, batch_size, generator):
    """Shuffles, then sorts pools of 50 batches by input length, so each batch holds words of about one length (little
    padding, short decoder loops) while the order of batches stays random. Returns lists of indices."""
    order = torch.randperm(len(pairs), generator=generator).tolist()
    batches, pool = [], 50 * batch_size
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: len(pairs[i][0]))
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation: decoding many words, metrics, predictions file, attention heatmaps.


def edit_distance(a, b):
    """Levenshtein distance: fewest insertions, deletions and substitutions turning a into b."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def transliteration_metrics(pairs, candidates):
    """pairs: (input, reference) per lexicon row; candidates: the model's outputs for that row, best first.

    word_accuracy: top-1 equals the row's reference, counted per row (Dakshina lists a word once per romanization).
    any_reference_accuracy: per distinct input, top-1 is any of the references given for that input.
    top_k_accuracy: the reference is among the candidates. cer: the edit distances of all rows' top-1 outputs, summed,
    over the summed lengths of their references (a rate over the whole corpus, not a mean of per-word rates).
    """
    references = defaultdict(set)
    for source, reference in pairs:
        references[source].add(reference)
    first_candidate = {source: options[0] for (source, _), options in zip(pairs, candidates)}
    return {
        "word_accuracy": sum(options[0] == ref for (_, ref), options in zip(pairs, candidates)) / len(pairs),
        "any_reference_accuracy": sum(first_candidate[s] in refs for s, refs in references.items()) / len(references),
        "top_k_accuracy": sum(ref in options for (_, ref), options in zip(pairs, candidates)) / len(pairs),
        "cer": (sum(edit_distance(options[0], ref) for (_, ref), options in zip(pairs, candidates))
                / sum(len(ref) for _, ref in pairs)),
    }


class Ensemble(nn.Module):
    """Several trained models that transliterate together by rescoring each other's proposals.

    Each model proposes its beam's best outputs; every model then scores every proposal with one teacher-forced
    pass (log P(output | input), summed over its characters), and the proposals are ranked by the models' mean of
    log P / length**length_penalty. Models trained from other seeds make partly different mistakes, and a left-to-right
    and a right-to-left model (--reverse_output) differ most: one commits to the start of a word before it has
    written the end, the other the other way round. Proposals and scores are text, so each model keeps its own
    character vocabularies (models trained on different rows may know different characters); a character that a
    model never saw reads as <unk> to it, which it was never trained to write, so it scores that proposal low.
    """

    def __init__(self, models, vocabularies):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.vocabularies = vocabularies  # one {"source": [...], "target": [...]} per model
        self.config = models[0].config


@torch.no_grad()
def output_log_probs(model, pairs, vocabularies, batch_size=512):
    """log P(output | input) for (input, output) pairs, summed over the output's characters and <eos>; and lengths."""
    model.eval()
    device = next(model.parameters()).device
    source_stoi = {c: i for i, c in enumerate(vocabularies["source"])}
    target_stoi = {c: i for i, c in enumerate(vocabularies["target"])}
    if model.config.reverse_output:
        pairs = [(source, output[::-1]) for source, output in pairs]
    log_probs, lengths = [], []
    for start in range(0, len(pairs), batch_size):
        source, source_lengths, target_inputs, target_outputs = make_batch(pairs[start:start + batch_size],
                                                                           source_stoi, target_stoi, device)
        logits = model(source, source_lengths, target_inputs).float()
        per_character = logits.log_softmax(-1).gather(-1, target_outputs.unsqueeze(-1)).squeeze(-1)
        real = target_outputs != PAD
        log_probs += (per_character * real).sum(1).tolist()
        lengths += real.sum(1).tolist()
    return log_probs, lengths


def ensemble_transliterate(ensemble, words, beam_size, max_length, length_penalty=0.5):
    """Proposals from every model's beam, ranked by the mean over models of log P / length**length_penalty."""
    distinct = list(dict.fromkeys(words))
    proposals = {word: {} for word in distinct}  # a dict keeps each proposal once, in order
    members = list(zip(ensemble.models, ensemble.vocabularies))
    for model, vocabularies in members:
        for word, options in zip(distinct, transliterate(model, distinct, vocabularies, beam_size, max_length,
                                                         length_penalty)):
            proposals[word].update(dict.fromkeys(text for text, _ in options))
    pairs = [(word, text) for word in distinct for text in proposals[word]]
    scored = [output_log_probs(model, pairs, vocabularies) for model, vocabularies in members]
    ranked = defaultdict(list)
    for index, (word, text) in enumerate(pairs):
        mean_log_prob = sum(log_probs[index] for log_probs, _ in scored) / len(scored)
        rank_score = sum(log_probs[index] / lengths[index] ** length_penalty
                         for log_probs, lengths in scored) / len(scored)
        ranked[word].append((rank_score, text, mean_log_prob))
    results = {word: [(text, log_prob) for _, text, log_prob in sorted(options, key=lambda o: -o[0])][:beam_size]
               for word, options in ranked.items()}
    return [results[word] for word in words]


@torch.no_grad()
def transliterate(model, words, vocabularies, beam_size, max_length, length_penalty=0.5, batch_size=256):
    """Returns, per word, a list of (candidate, log-probability) best first; greedy when beam_size is 1. An Ensemble
    uses its models' own vocabularies."""
    if isinstance(model, Ensemble):
        return ensemble_transliterate(model, words, beam_size, max_length, length_penalty)
    model.eval()
    in_reading_order = (lambda text: text[::-1]) if model.config.reverse_output else (lambda text: text)
    device = next(model.parameters()).device
    source_stoi = {c: i for i, c in enumerate(vocabularies["source"])}
    target_itos = vocabularies["target"]
    results = {}
    distinct = sorted(set(words), key=lambda w: (len(w), w))  # each distinct word once; similar lengths share a batch
    for start in range(0, len(distinct), batch_size):
        chunk = distinct[start:start + batch_size]
        source, lengths, _, _ = make_batch([(w, "") for w in chunk], source_stoi, {}, device)
        if beam_size == 1:
            ids, _, log_probs = greedy_decode(model, source, lengths, max_length)
            for word, row, score in zip(chunk, ids.tolist(), log_probs.tolist()):
                results[word] = [(in_reading_order(decode_ids(row, target_itos)), score)]
        else:
            ids, _, log_probs = beam_search(model, source, lengths, beam_size, max_length, length_penalty)
            for word, rows, scores in zip(chunk, ids.tolist(), log_probs.tolist()):
                results[word] = [(in_reading_order(decode_ids(row, target_itos)), score)
                                 for row, score in zip(rows, scores)]
    return [results[w] for w in words]


def find_font(characters):
    """Path of an installed font that has a glyph for every character, or None."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    needed = {ord(c) for c in characters}
    for entry in sorted(font_manager.fontManager.ttflist, key=lambda e: "Noto" not in e.name):
        if "Last Resort" in entry.name:  # matplotlib's fallback maps every code point to a placeholder box
            continue
        try:
            if needed <= FT2Font(entry.fname).get_charmap().keys():
                return entry.fname
        except (OSError, RuntimeError):
            continue
    return None


@torch.no_grad()
def attention_of(model, words, outputs, vocabularies):
    """The attention weights (B, T, S) of writing each given output (in the order the decoder writes it) for each
    input word, from one teacher-forced pass: row t is the step that wrote character t, the last real row <eos>."""
    model.eval()
    device = next(model.parameters()).device
    source_stoi = {c: i for i, c in enumerate(vocabularies["source"])}
    target_stoi = {c: i for i, c in enumerate(vocabularies["target"])}
    source, lengths, target_inputs, _ = make_batch(list(zip(words, outputs)), source_stoi, target_stoi, device)
    memory, keys, memory_mask, state = model.encode(source, lengths)
    return model.decoder(target_inputs, state, memory, keys, memory_mask)[2]


def save_attention_heatmaps(model, words, predictions, vocabularies, path):
    """Draws, for each word and its prediction (the beam's best, as in the predictions file), which input characters
    (x) the decoder attended to while writing each output character (y). Rows are in the order the decoder wrote them
    (backwards for a --reverse_output model); an ensemble shows its first model."""
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties

    if isinstance(model, Ensemble):
        model, vocabularies = model.models[0], model.vocabularies[0]
    outputs = [p[::-1] if model.config.reverse_output else p for p in predictions]  # in the order written
    weights = attention_of(model, words, outputs, vocabularies)
    characters = "".join(words) + "".join(outputs)
    font_path = find_font(characters)
    if font_path is None:
        first = outputs[0][::-1] if model.config.reverse_output else outputs[0]  # in reading order
        print(f"no installed font has glyphs for every character of {first!r}, so {path} labels them by code "
              f"point; install a Noto Sans font for this script (Debian/Ubuntu: fonts-noto) to see the characters")
    font = FontProperties(fname=font_path) if font_path else None
    label = (lambda c: c) if font_path else (lambda c: c if c.isascii() else f"U+{ord(c):04X}")
    figure = Figure(figsize=(4 * len(words), 4.5))
    for index, (word, output) in enumerate(zip(words, outputs)):
        axes = figure.add_subplot(1, len(words), index + 1)
        rows = output + "\u2403"  # the last row is the step that wrote <eos>
        axes.imshow(weights[index, :len(rows), :len(word)].cpu().numpy(), cmap="viridis", vmin=0, vmax=1)
        axes.set_xticks(range(len(word)), [label(c) for c in word], fontproperties=font)
        axes.set_yticks(range(len(rows)), [label(c) for c in output] + ["<eos>"], fontproperties=font)
        reading = output[::-1] if model.config.reverse_output else output
        axes.set_title(f"{word} -> {reading}" if font_path else word, fontproperties=font)
        axes.set_xlabel("input character")
    figure.tight_layout()
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp.png")
    figure.savefig(temporary, dpi=100)
    os.replace(temporary, path)
    return font_path


def evaluate_and_report(model, pairs, vocabularies, config, out_dir, title):
    """Beam-searches every row, prints the metrics and a few right and wrong examples, writes predictions-TITLE.tsv
    (and attention-TITLE.png), named after what was scored so that evaluating test never overwrites dev's files."""
    tag = title.removesuffix(".tsv")  # dev, test, train, or the lexicon file's name
    start = time.time()
    candidates = transliterate(model, [source for source, _ in pairs], vocabularies, config.beam_size,
                               config.max_output_length, config.length_penalty)
    candidates = [[text for text, _ in options] for options in candidates]
    metrics = transliteration_metrics(pairs, candidates)
    print(f"{title} (beam {config.beam_size}, {len(pairs)} rows, {time.time() - start:.1f}s): "
          f"word accuracy {metrics['word_accuracy']:.2%} | any-reference {metrics['any_reference_accuracy']:.2%} | "
          f"top-{config.beam_size} {metrics['top_k_accuracy']:.2%} | CER {metrics['cer']:.2%}")
    right = [(p, c[0]) for p, c in zip(pairs, candidates) if c[0] == p[1]][:4]
    wrong = [(p, c[0]) for p, c in zip(pairs, candidates) if c[0] != p[1]][:4]
    for mark, examples in (("right", right), ("wrong", wrong)):
        for (source, reference), prediction in examples:
            print(f"  {mark}: {source} -> {prediction} (reference {reference})")
    lines = ["input\treference\tprediction\tcorrect"]
    lines += [f"{s}\t{r}\t{c[0]}\t{int(c[0] == r)}" for (s, r), c in zip(pairs, candidates)]
    write_atomically(Path(out_dir) / f"predictions-{tag}.tsv", ("\n".join(lines) + "\n").encode())
    if config.attention == "none" and config.heatmaps > 0:
        print("no attention heatmaps: this model has no attention (--attention none)")
    elif config.heatmaps > 0:
        best = dict(zip((s for s, _ in pairs), (c[0] for c in candidates)))  # each input word once, in order
        words = list(best)[:config.heatmaps]
        save_attention_heatmaps(model, words, [best[w] for w in words], vocabularies,
                                Path(out_dir) / f"attention-{tag}.png")
    return metrics


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints, training.


def write_atomically(path, data):
    """Writes bytes to a temporary file and renames it, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def save_checkpoint(path, model, optimizer, config, vocabularies, progress, generator, averaged=None):
    checkpoint = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                  "config": dataclasses.asdict(config), "vocabularies": vocabularies, "progress": progress,
                  "torch_rng": torch.get_rng_state(), "batch_rng": generator.get_state()}
    if averaged is not None:
        checkpoint["averaged_model"] = averaged.state_dict()
    if torch.cuda.is_available():  # on a GPU, dropout and scheduled sampling draw from the CUDA generators
        checkpoint["cuda_rng"] = torch.cuda.get_rng_state_all()
    temporary = Path(str(path) + ".tmp")
    torch.save(checkpoint, temporary)
    os.replace(temporary, path)


def load_checkpoint(path):
    if Path(path).is_dir():
        raise SystemExit(f"{path} is a folder; pass the checkpoint file inside it, e.g. {Path(path) / 'best.pt'}.")
    if not Path(path).is_file():
        raise SystemExit(f"checkpoint {path} does not exist; train one with `python seq2seq_rnn.py` or pass "
                         f"--checkpoint PATH.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated file, or one holding more than tensors and plain values
        raise SystemExit(f"could not read checkpoint {path} ({type(error).__name__}); it is damaged or not a "
                         f"seq2seq_rnn.py checkpoint, so train a new one.")
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise SystemExit(f"{path} is not a checkpoint that seq2seq_rnn.py wrote; pass the best.pt or last.pt of a "
                         f"seq2seq_rnn.py run.")
    return checkpoint


def as_option(name, value):
    """How the command line spells a setting: --cell gru, --bidirectional, --no-bidirectional."""
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no-{name}"
    return f"--{name} {value}"


def model_from_checkpoint(checkpoint, given, device):
    """Rebuilds the model a checkpoint was trained with; model options given on the command line must agree."""
    saved = {**OLDER_CHECKPOINT_VALUES, **checkpoint["config"]}
    config = Config(**{**saved, **{k: v for k, v in given.items() if k not in MODEL_FIELDS}})
    for name in MODEL_FIELDS:
        trained_with = saved[name]
        if name in given and given[name] != trained_with:
            raise SystemExit(f"the checkpoint was trained with {as_option(name, trained_with)}, not "
                             f"{as_option(name, given[name])}; drop that option or train a new model.")
    vocabularies = checkpoint["vocabularies"]
    model = Seq2Seq(config, len(vocabularies["source"]), len(vocabularies["target"])).to(device)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError:
        raise SystemExit("the checkpoint's weights do not fit the model its own config describes; it is damaged, "
                         "so train a new one.")
    return model, config, vocabularies


def load_models(paths, given, device):
    """One checkpoint gives its model; several (comma-separated) give an Ensemble of them."""
    loaded = [model_from_checkpoint(load_checkpoint(path), given, device) for path in paths]
    model, config, vocabularies = loaded[0]
    for path, (_, other, _) in zip(paths[1:], loaded[1:]):
        if (other.lang, other.direction) != (config.lang, config.direction):
            raise SystemExit(f"{path} transliterates --lang {other.lang} {other.direction}, but {paths[0]} --lang "
                             f"{config.lang} {config.direction}; an ensemble needs models of one language and "
                             f"direction.")
    if len(loaded) == 1:
        return model, config, vocabularies
    return Ensemble([m for m, _, _ in loaded], [v for _, _, v in loaded]), config, vocabularies


def pick_device(name):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SystemExit(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps.")
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise SystemExit(f"--device {name}: this PyTorch sees no such CUDA GPU; use --device auto or cpu.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SystemExit("--device mps: this PyTorch has no Apple GPU (MPS) support here; use --device auto or cpu.")
    if device.type not in ("cpu", "cuda", "mps"):
        raise SystemExit(f"--device {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps.")
    return name


def training_dtype(precision, device):
    """The dtype of training's matrix products. Under autocast the LSTM, linear and attention products read bfloat16
    copies of their inputs, while the weights, Adam's state and the loss stay float32 (mixed precision, Micikevicius et
    al. 2018, https://arxiv.org/abs/1710.03740; bfloat16 keeps float32's exponent range, so no loss scaling is needed).
    auto picks bfloat16 only on a CPU with native bfloat16 instructions (AVX512-BF16 or AMX: oneDNN's LSTM then runs
    about 1.5x faster); elsewhere, and on GPUs, float32. Decoding and evaluation always run in float32."""
    if precision == "float32":
        return torch.float32
    if precision == "bfloat16":
        return torch.bfloat16
    return torch.bfloat16 if torch.device(device).type == "cpu" and cpu_computes_bfloat16() else torch.float32


def cpu_computes_bfloat16():
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # an older or slimmer PyTorch build without the probe
        return False


def make_optimizer(model, config, device):
    # The fused kernel updates all parameters in one pass (a few ms per step less on the CPU); it gives Adam's results.
    return torch.optim.Adam(model.parameters(), lr=config.learning_rate,
                            fused=torch.device(device).type in ("cpu", "cuda"))


def dev_accuracy(model, pairs, vocabularies, config):
    """Greedy word accuracy per row: cheap enough to run after every epoch for early stopping."""
    candidates = transliterate(model, [s for s, _ in pairs], vocabularies, 1, config.max_output_length)
    return sum(options[0][0] == reference for (_, reference), options in zip(pairs, candidates)) / len(pairs)


@torch.no_grad()
def update_average(averaged, model, decay, step):
    """Exponential moving average of the weights: averaged <- decay * averaged + (1 - decay) * model.

    Adam's noisy steps bounce around the bottom of a valley; the average of the last ~1 / (1 - decay) steps sits nearer
    its middle and usually scores better than the last step's weights, at no cost in training (iterate averaging:
    Polyak and Juditsky 1992). The warm-up (1 + step) / (10 + step) forgets the random initial weights quickly."""
    decay = min(decay, (1 + step) / (10 + step))
    for average, weight in zip(averaged.parameters(), model.parameters()):
        average.lerp_(weight, 1 - decay)


def linear_learning_rate(config, progress, seconds_into_epoch, fraction_of_epoch):
    """Linear decay from --learning_rate to zero over the whole run: over --epochs, or over the --max_minutes clock
    if that ends first (so a time-limited run ends near zero on a slow machine and a fast one alike: within the share
    of one epoch, since training stops at an epoch's end). Budgeted training favours this shape (Li, Yumer, Ramanan
    2020, https://arxiv.org/abs/1905.04753)."""
    done = (progress["epoch"] + fraction_of_epoch) / config.epochs
    if config.max_minutes:
        done = max(done, (progress["train_seconds"] + seconds_into_epoch) / (60 * config.max_minutes))
    return config.learning_rate * max(0.0, 1.0 - done)


def train(config, given):
    device = pick_device(config.device)
    out_dir = Path(config.out_dir)
    if config.resume and not (out_dir / "last.pt").is_file():
        raise SystemExit(f"nothing to resume: {out_dir / 'last.pt'} does not exist; give the --out_dir of the run to "
                         f"continue, or start a new run without --resume.")
    if not config.resume and (out_dir / "last.pt").exists():  # a new run must not overwrite a trained model
        raise SystemExit(f"{out_dir} already holds a run (last.pt); continue it with --resume, or choose another "
                         f"--out_dir (or delete that one).")
    checkpoint = load_checkpoint(out_dir / "last.pt") if config.resume else None
    if checkpoint is not None:
        # A resumed run reads the data the interrupted run read, unless this command line names it again: with
        # other dev rows, early stopping would compare accuracies measured on different words.
        config = dataclasses.replace(config, **{name: checkpoint["config"][name] for name in RESUMED_DATA_FIELDS
                                                if name in checkpoint["config"] and name not in given})
    out_dir.mkdir(parents=True, exist_ok=True)
    train_pairs = read_lexicon(lexicon_path(config, "train"), config.direction)
    dev_pairs = read_lexicon(lexicon_path(config, "dev"), config.direction)
    train_pairs = train_pairs[:config.max_train_rows] if config.max_train_rows else train_pairs
    dev_pairs = dev_pairs[:config.max_dev_rows] if config.max_dev_rows else dev_pairs
    # The vocabularies come from the training split only: dev characters never seen in training become <unk>.
    vocabularies = {"source": build_vocabulary(s for s, _ in train_pairs),
                    "target": build_vocabulary(t for _, t in train_pairs)}
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    progress = {"epoch": 0, "step": 0, "best_dev_accuracy": -1.0, "epochs_without_improvement": 0,
                "train_seconds": 0.0, "learning_rate": config.learning_rate}
    model = Seq2Seq(config, len(vocabularies["source"]), len(vocabularies["target"])).to(device)
    optimizer = make_optimizer(model, config, device)
    if checkpoint is not None:
        if checkpoint["vocabularies"] != vocabularies:
            trained = {name: checkpoint["config"].get(name) for name in ("lang", "direction", "max_train_rows")}
            raise SystemExit(f"{out_dir / 'last.pt'} was trained on other characters (it was trained with "
                             f"{' '.join(as_option(k, v) for k, v in trained.items())}); resume with the same data "
                             f"options or use a new --out_dir.")
        model, config, vocabularies = model_from_checkpoint(checkpoint, given, device)
        optimizer = make_optimizer(model, config, device)
        optimizer.load_state_dict(checkpoint["optimizer"])
        progress = checkpoint["progress"]
        torch.set_rng_state(checkpoint["torch_rng"])
        if "cuda_rng" in checkpoint and torch.cuda.is_available() \
                and len(checkpoint["cuda_rng"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])
        generator.set_state(checkpoint["batch_rng"])
        print(f"resuming after epoch {progress['epoch']} ({progress['train_seconds'] / 60:.1f} min trained, best dev "
              f"accuracy {progress['best_dev_accuracy']:.2%})")
        if progress["epoch"] >= config.epochs:
            print(f"already at epoch {progress['epoch']} of --epochs {config.epochs}: raise --epochs to train further")
    averaged = copy.deepcopy(model) if config.average_decay else None  # None: dev and best.pt use the weights as is
    if averaged is not None and config.resume and "averaged_model" in checkpoint:
        averaged.load_state_dict(checkpoint["averaged_model"])
    source_stoi = {c: i for i, c in enumerate(vocabularies["source"])}
    target_stoi = {c: i for i, c in enumerate(vocabularies["target"])}
    if config.reverse_output:  # a right-to-left model learns each word backwards; transliterate() turns it round
        train_pairs = [(source, target[::-1]) for source, target in train_pairs]
    parameter_count = sum(p.numel() for p in model.parameters())
    dtype = training_dtype(config.precision, device)
    print(f"{len(train_pairs)} training and {len(dev_pairs)} dev rows | source vocabulary {len(source_stoi)}, "
          f"target vocabulary {len(target_stoi)} | {parameter_count:,} parameters | device {device} | training "
          f"products in {str(dtype).removeprefix('torch.')}")
    for name, parameter in model.named_parameters():
        print(f"  {name:40s} {tuple(parameter.shape)}")
    log_file = open(out_dir / "log.jsonl", "a" if config.resume else "w")  # a new run starts a new log
    try:
        while progress["epoch"] < config.epochs:
            if progress["epochs_without_improvement"] >= config.patience:
                print(f"early stop: no better dev accuracy for {config.patience} epochs")
                break
            last_epoch_seconds = progress.get("last_epoch_seconds", 0.0)
            if config.max_minutes and progress["train_seconds"] + last_epoch_seconds > 60 * config.max_minutes:
                print(f"time budget: another epoch would pass --max_minutes {config.max_minutes}")
                break
            epoch_start = time.time()
            for group in optimizer.param_groups:
                group["lr"] = progress["learning_rate"]
            model.train()
            step_in_epoch = 0
            total_loss, total_words = 0.0, 0
            batches = batches_by_length(train_pairs, config.batch_size, generator)
            for indices in tqdm(batches, desc=f"epoch {progress['epoch'] + 1}", leave=False, mininterval=1.0):
                source, lengths, target_inputs, target_outputs = make_batch(
                    [train_pairs[i] for i in indices], source_stoi, target_stoi, device)
                if config.lr_schedule == "linear":
                    learning_rate = linear_learning_rate(config, progress, time.time() - epoch_start,
                                                         step_in_epoch / len(batches))
                    for group in optimizer.param_groups:
                        group["lr"] = learning_rate
                step_in_epoch += 1
                with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32):
                    logits = model(source, lengths, target_inputs, config.teacher_forcing)
                loss = sequence_loss(logits.float(), target_outputs, config.label_smoothing)  # softmax in float32
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip > 0:  # an occasional huge gradient (RNNs are prone to them) cannot wreck the model
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                if averaged is not None:
                    update_average(averaged, model, config.average_decay, progress["step"])
                total_loss += loss.item() * len(indices)
                total_words += len(indices)
                progress["step"] += 1
            train_seconds = time.time() - epoch_start
            scored = averaged if averaged is not None else model  # the weights that dev scores and best.pt keeps
            accuracy = dev_accuracy(scored, dev_pairs, vocabularies, config)
            epoch_seconds = time.time() - epoch_start  # the dev pass is part of training: it picks the checkpoint
            progress["epoch"] += 1
            progress["train_seconds"] += epoch_seconds
            progress["last_epoch_seconds"] = epoch_seconds
            improved = accuracy > progress["best_dev_accuracy"]
            record = {"epoch": progress["epoch"], "step": progress["step"], "loss": total_loss / total_words,
                      "dev_accuracy": accuracy, "lr": optimizer.param_groups[0]["lr"],
                      "ms_per_step": 1000 * train_seconds / len(batches), "words_per_sec": total_words / train_seconds,
                      "minutes": progress["train_seconds"] / 60}
            print(f"epoch {record['epoch']} | loss {record['loss']:.3f} | dev greedy accuracy {accuracy:.2%}"
                  f"{' (best)' if improved else ''} | lr {record['lr']:.1e} | {record['ms_per_step']:.0f} ms/step | "
                  f"{record['words_per_sec']:.0f} words/s | {record['minutes']:.1f} min")
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            if improved:
                progress["best_dev_accuracy"], progress["epochs_without_improvement"] = accuracy, 0
                save_checkpoint(out_dir / "best.pt", scored, optimizer, config, vocabularies, progress, generator)
            else:
                progress["epochs_without_improvement"] += 1
                if config.lr_schedule == "plateau":
                    progress["learning_rate"] *= config.lr_decay
            save_checkpoint(out_dir / "last.pt", model, optimizer, config, vocabularies, progress, generator, averaged)
            sample = [s for s, _ in dev_pairs[:: max(1, len(dev_pairs) // 3)][:3]]
            outputs = transliterate(scored, sample, vocabularies, 1, config.max_output_length)
            print("  sample: " + ", ".join(f"{s} -> {o[0][0]}" for s, o in zip(sample, outputs)))
    except KeyboardInterrupt:  # Ctrl-C: keep what was trained (last.pt holds the last finished epoch) and evaluate
        if (out_dir / "best.pt").exists():
            print("interrupted: evaluating the best checkpoint so far")
        else:
            print("interrupted before the first epoch finished: there is no best.pt to evaluate yet")
    finally:
        log_file.close()
    if not (out_dir / "best.pt").exists():
        return None
    model, config, vocabularies = model_from_checkpoint(load_checkpoint(out_dir / "best.pt"), given, device)
    print(f"best checkpoint: epoch {progress['epoch'] - progress['epochs_without_improvement']}, "
          f"{progress['train_seconds'] / 60:.1f} min of training in all")
    return evaluate_and_report(model, dev_pairs, vocabularies, config, out_dir, "dev")


# ----------------------------------------------------------------------------------------------------------------------
# Command line.


def field_help():
    """The comment after each Config field, used as its --help text."""
    try:
        source = inspect.getsource(Config)
    except (OSError, TypeError):  # e.g. pasted into a notebook without a source file
        return {}
    return dict(re.findall(r"^\s+(\w+): \w+ = .*?  # (.*)$", source, flags=re.MULTILINE))


def parse_config(argv):
    """Builds the parser from Config; returns the config and the options actually given."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0], argument_default=argparse.SUPPRESS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)  # a misspelled or shortened flag is an error, never a guess
    helps = field_help()
    choices = {"cell": ("rnn", "gru", "lstm"), "attention": ("none", "dot", "additive"), "lang": LANGUAGES,
               "lr_schedule": ("plateau", "linear"), "precision": ("auto", "float32", "bfloat16"),
               "direction": ("roman2native", "native2roman")}
    for field in dataclasses.fields(Config):
        help_text = helps.get(field.name, "") + (f" (default: {field.default})" if field.default != "" else "")
        if field.type is bool:
            parser.add_argument(f"--{field.name}", action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(f"--{field.name}", type=field.type, choices=choices.get(field.name), help=help_text)
    arguments, unknown = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if unknown[:1] == ["-f"]:  # Jupyter/Colab start the kernel with `-f kernel.json`: ignore it
        unknown = unknown[2:]
    if unknown:
        if getattr(arguments, "translit", None) and not unknown[0].startswith("-"):  # --translit namaste duniya
            raise SystemExit(f"unknown option(s) {' '.join(unknown)}; to transliterate several words, quote them: "
                             f"--translit \"{' '.join([arguments.translit, *unknown])}\".")
        raise SystemExit(f"unknown option(s) {' '.join(unknown)}; see `python seq2seq_rnn.py --help`.")
    given = vars(arguments)
    return Config(**given), given


def main(argv=None):
    config, given = parse_config(argv)
    if config.beam_size < 1:
        raise SystemExit(f"--beam_size must be at least 1 (1 is greedy decoding), not {config.beam_size}.")
    for name in ("hidden_size", "embedding_size", "encoder_layers", "decoder_layers", "batch_size", "epochs",
                 "max_output_length", "patience"):
        if getattr(config, name) < 1:
            raise SystemExit(f"--{name} must be at least 1, not {getattr(config, name)}.")
    for field in dataclasses.fields(Config):
        if field.type is float and not math.isfinite(getattr(config, field.name)):
            raise SystemExit(f"--{field.name} must be a number, not {getattr(config, field.name)}.")
    for name in ("max_train_rows", "max_dev_rows", "learning_rate", "grad_clip", "max_minutes", "heatmaps", "threads",
                 "length_penalty"):
        if getattr(config, name) < 0:
            raise SystemExit(f"--{name} cannot be negative ({getattr(config, name)}).")
    if not 0 <= config.label_smoothing < 1 or not 0 < config.lr_decay <= 1:
        raise SystemExit(f"--label_smoothing must be at least 0 and below 1 (not {config.label_smoothing}) and "
                         f"--lr_decay above 0 and at most 1 (not {config.lr_decay}).")
    if not 0 <= config.average_decay < 1:
        raise SystemExit(f"--average_decay must be at least 0 (off) and below 1 (e.g. 0.999), not "
                         f"{config.average_decay}.")
    if not 0.0 <= config.dropout < 1.0:
        raise SystemExit(f"--dropout must be at least 0 and below 1, not {config.dropout}.")
    if not 0.0 <= config.teacher_forcing <= 1.0:
        raise SystemExit(f"--teacher_forcing must be between 0 and 1, not {config.teacher_forcing}.")
    if "translit" in given and "evaluate" in given:
        raise SystemExit("give --translit (words to transliterate) or --evaluate (a lexicon to score), not both.")
    if "translit" in given and not config.translit.split():
        raise SystemExit("--translit needs at least one word, e.g. --translit \"namaste duniya\".")
    if "evaluate" in given and not config.evaluate.strip():
        raise SystemExit("--evaluate needs a lexicon file (or train, dev or test for that split of --lang).")
    if config.input_feeding and config.attention == "none" and not (config.evaluate or config.translit):
        raise SystemExit("--input_feeding feeds the attentional state back, so it needs --attention dot or additive.")
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    if not (config.evaluate or config.translit):
        return train(config, given)
    device = pick_device(config.device)
    checkpoints = config.checkpoint or str(Path(config.out_dir) / "best.pt")
    checkpoint_paths = [path.strip() for path in checkpoints.split(",")]
    if "" in checkpoint_paths:
        raise SystemExit(f"--checkpoint {config.checkpoint!r} has an empty name; separate checkpoint files by single "
                         f"commas, e.g. a/best.pt,b/best.pt.")
    model, trained, vocabularies = load_models(checkpoint_paths, given, device)
    # The checkpoint fixes the model (its shape, language and direction) and, unless --data_dir is given, the folder
    # its lexicons came from. What this command scores, how it decodes and where it writes (--max_dev_rows,
    # --beam_size, --length_penalty, --out_dir, ...) come from this command line or the defaults, never from the
    # training run: a run trained with --max_dev_rows 100 is still scored on the whole dev split.
    config = dataclasses.replace(config, **{name: getattr(trained, name) for name in MODEL_FIELDS})
    if "data_dir" not in given:
        config.data_dir = trained.data_dir
    if config.translit:
        words = config.translit.split()
        known = set(vocabularies["source"])
        if not any(c.isupper() for c in known):  # Dakshina's romanizations are lower case: "Namaste" means namaste
            words = [word.lower() for word in words]
        unseen = sorted({c for word in words for c in word if c not in known})
        if unseen:
            print(f"note: the model never saw {''.join(unseen)!r} in training; it reads them as <unk>")
        results = transliterate(model, words, vocabularies, config.beam_size, config.max_output_length,
                                config.length_penalty)
        # P(word) for one model; for an ensemble the geometric mean of the models' P(word)
        print(f"best first, ranked by log P / length**{config.length_penalty} (so a longer word can outrank a more "
              f"probable one); P(word) in brackets")
        for word, options in zip(words, results):
            print(f"{word}: " + "  ".join(f"{text} ({math.exp(score):.2f})" for text, score in options))
        return results
    split = config.evaluate if config.evaluate in ("train", "dev", "test") and not Path(config.evaluate).exists() \
        else None
    pairs = read_lexicon(lexicon_path(config, split) if split else config.evaluate, config.direction)
    if split == "dev" and config.max_dev_rows:
        pairs = pairs[:config.max_dev_rows]
    known = set(vocabularies["source"])
    characters = "".join(source for source, _ in pairs)
    unknown_share = sum(c not in known for c in characters) / len(characters)
    if unknown_share > 0.5:
        raise SystemExit(f"{unknown_share:.0%} of the input characters in {config.evaluate} are not in the "
                         f"checkpoint's vocabulary; is the file in the language and direction it was trained on "
                         f"({config.lang}, {config.direction})?")
    Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    return evaluate_and_report(model, pairs, vocabularies, config, config.out_dir, split or Path(config.evaluate).name)


# %% Run
if __name__ == "__main__":
    main()
