"""Character-level sequence-to-sequence transliteration with the original encoder-decoder Transformer.

Type Hindi in Latin letters ("namaste"), get Devanagari ("नमस्ते"). The encoder lets every input character
attend to every other; the decoder writes the output one character at a time, attending to what it has written (masked,
so it never sees the future) and, through cross-attention, to the encoder's output. seq2seq_rnn.py solves the same task
with the same data, metrics and command line, so `diff seq2seq_rnn.py seq2seq_transformer.py` shows what changes.
References: Vaswani et al. 2017, "Attention Is All You Need", https://arxiv.org/abs/1706.03762 (section numbers below);
Xiong et al. 2020 (pre-LN), https://arxiv.org/abs/2002.04745; the Dakshina lexicons, https://arxiv.org/abs/2007.01176

Run:
  python prepare_data.py dakshina --lang hi        # once: data/dakshina/hi/
  python seq2seq_transformer.py --max_minutes 20   # CPU: all done in 20 minutes, ~48% dev word accuracy (beam 5)
  python seq2seq_transformer.py --device cuda      # GPU; Colab: paste this file into a cell, or !python ...
  python seq2seq_transformer.py --translit "namaste duniya" --checkpoint out-seq2seq-transformer/best.pt
  python seq2seq_transformer.py --evaluate dev --checkpoint out-seq2seq-transformer/best.pt   # or test, or a .tsv
"""

import argparse
import copy
import dataclasses
import difflib
import inspect
import itertools
import json
import math
import os
import re
import sys
import tempfile
import time
import typing
import warnings
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm

@dataclasses.dataclass
class Config:
    # data
    lang: typing.Literal["bn", "gu", "hi", "kn", "ml", "mr", "pa", "sd", "si", "ta", "te", "ur"] = "hi"  # language
    direction: typing.Literal["roman2native", "native2roman"] = "roman2native"  # Latin letters in, or native script in
    data_dir: str = ""  # folder written by `prepare_data.py dakshina` (empty: data/dakshina/<lang>)
    max_train_rows: int = 0  # train on the first N rows only (0 = all); for quick experiments and tests
    max_dev_rows: int = 0  # score the first N dev rows only (0 = all)
    # model
    d_model: int = 128  # width of every position's vector (the paper's d_model)
    n_head: int = 4  # attention heads, each d_model / n_head wide
    encoder_layers: int = 2  # encoder layers (the paper: 6)
    decoder_layers: int = 2  # decoder layers (the paper: 6)
    d_ff: int = 512  # width of the position-wise feed-forward network (the paper: 4 * d_model)
    dropout: float = 0.1  # dropout on embeddings, attention weights and every sub-layer's output
    norm_first: bool = True  # pre-LN: LayerNorm before each sub-layer; --no-norm_first: after, as in the paper
    # training
    epochs: int = 100  # most passes over the training split
    batch_size: int = 128  # words per step
    learning_rate: float = 2e-3  # Adam step size after the warmup
    warmup_steps: int = 500  # the learning rate rises linearly from 0 over this many steps
    lr_decay: float = 0.5  # multiply the learning rate by this after an epoch without a better dev accuracy
    label_smoothing: float = 0.1  # train towards (1 - this) * one-hot + this * uniform over all output symbols
    grad_clip: float = 1.0  # clip the gradient norm to this (0 = off)
    average_decay: float = 0.999  # dev and best.pt use a moving average of the weights (decay per step; 0 = off)
    patience: int = 5  # stop after this many epochs without a better dev accuracy
    max_minutes: float = 0.0  # the whole run, final evaluation included, ends within this many minutes (0 = off)
    resume: bool = False  # continue from out_dir/last.pt
    seed: int = 1337  # seed for initialization, batch order and dropout
    # decoding and evaluation
    beam_size: int = 5  # hypotheses kept by beam search (1 = greedy)
    length_penalty: float = 0.5  # rank hypotheses by log-probability / length**length_penalty
    max_output_length: int = 40  # longest output word, in characters
    checkpoint: str = ""  # checkpoint for --evaluate and --translit (default: out_dir/best.pt)
    evaluate: str = ""  # score a lexicon: a .tsv file, or dev, test or train of the checkpoint's data
    translit: str = ""  # transliterate these space-separated words with --checkpoint and print the top candidates
    heatmaps: int = 4  # words to draw cross-attention heatmaps for (one row of pictures per decoder layer)
    # system
    out_dir: str = "out-seq2seq-transformer"  # checkpoints, log.jsonl, predictions-dev.tsv, attention-dev.png go here
    device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps
    dtype: typing.Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # autocast (auto: bf16 on CUDA, else fp32)
    compile: typing.Optional[bool] = None  # torch.compile the model for training (default: on CUDA only)

SCRIPT, CHECKPOINT_FORMAT = "seq2seq_transformer.py", "nanoverse-seq2seq-transformer-v1"
# What a checkpoint's model is: its shape and its data. --evaluate, --translit and --resume take these from it.
MODEL_FIELDS = ("lang", "direction", "d_model", "n_head", "encoder_layers", "decoder_layers", "d_ff", "norm_first")
ZERO_ALLOWED = ("max_train_rows", "max_dev_rows", "heatmaps", "seed")  # every other whole number counts from 1

# %% Characters to ids: vocabularies and padded batches
PAD, SOS, EOS, UNK = 0, 1, 2, 3
SPECIAL_TOKENS = ["<pad>", "<sos>", "<eos>", "<unk>"]

def build_vocabulary(words):
    """Special tokens, then every character of the training words in sorted order."""
    return SPECIAL_TOKENS + sorted(set("".join(words)))

def decode_ids(ids, itos):
    ids = ids[:min(ids.index(end) if end in ids else len(ids) for end in (EOS, PAD))]  # the word ends at <eos>
    return "".join(itos[i] if i >= len(SPECIAL_TOKENS) else "?" for i in ids)

def make_batch(pairs, vocabularies, device):
    """Pads (input, output) words into tensors: source (B, S), lengths (B,), decoder inputs and targets (B, T)."""
    stoi = {side: {c: i for i, c in enumerate(vocabularies[side])} for side in ("source", "target")}
    sources, targets = ([torch.tensor([stoi[side].get(c, UNK) for c in pair[i]], dtype=torch.long) for pair in pairs]
                        for i, side in enumerate(stoi))  # a character never seen in training becomes <unk>
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

# %% Positions: attention itself ignores order, so each position adds its own pattern of sines and cosines
def sinusoidal_positions(start, length, d_model):
    """Section 3.5: PE(pos, 2i) = sin(pos / 10000**(2i / d_model)), PE(pos, 2i + 1) = cos(pos / 10000**(2i / d_model)),
    for positions start .. start + length - 1: (length, d_model). Fixed, not learned, so any length works."""
    position = torch.arange(start, start + length, dtype=torch.float32)[:, None]
    frequency = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)  # (d_model / 2,)
    return torch.stack([torch.sin(position * frequency), torch.cos(position * frequency)], dim=-1).flatten(1)

class Embedding(nn.Module):
    """Section 3.4: a character's vector times sqrt(d_model), plus its position's (3.5), then dropout. The vectors start
    at d_model**-0.5 per coordinate, so that scaled they are about as large as the sines and cosines (PyTorch's default
    of 1 would drown the positions)."""

    def __init__(self, vocab_size, config):
        super().__init__()
        self.table, self.dropout = nn.Embedding(vocab_size, config.d_model, padding_idx=PAD), nn.Dropout(config.dropout)
        nn.init.normal_(self.table.weight, std=config.d_model ** -0.5)

    def forward(self, tokens, start=0):  # (B, T) -> (B, T, d_model), for positions start .. start + T - 1
        x = self.table(tokens) * math.sqrt(self.table.embedding_dim)
        return self.dropout(x + sinusoidal_positions(start, tokens.size(1), x.size(-1)).to(x.device))

# %% Attention, written once: every query takes a weighted mean of the values whose keys match it
class MultiHeadAttention(nn.Module):
    """Section 3.2: Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V, in n_head heads of d_k = d_model / n_head each,
    concatenated and projected back. Self-attention takes Q, K and V from one sequence; cross-attention takes Q from
    the decoder and K, V from the encoder's output. Masks are boolean, True where a query may look."""

    def __init__(self, config):
        super().__init__()
        self.n_head, self.dropout = config.n_head, config.dropout
        self.query = nn.Linear(config.d_model, config.d_model)
        self.key_value = nn.Linear(config.d_model, 2 * config.d_model)  # keys and values in one product
        self.out = nn.Linear(config.d_model, config.d_model)

    def keys_values(self, x):
        """(B, S, d_model) -> the keys and values of every position, (B, 2, nh, S, d_k)."""
        B, S, d = x.shape
        return self.key_value(x).view(B, S, 2, self.n_head, d // self.n_head).permute(0, 2, 3, 1, 4)

    def forward(self, x, keys_values, mask, need_weights=False):
        B, T, d = x.shape  # x: the queries' positions; keys_values (B, 2, nh, S, d_k); mask broadcasts to (B, nh, T, S)
        q = self.query(x).view(B, T, self.n_head, d // self.n_head).transpose(1, 2)  # (B, nh, T, d_k)
        k, v = keys_values.unbind(1)  # (B, nh, S, d_k) each
        dropout = self.dropout if self.training else 0.0
        if need_weights:  # the math, written out: the weights are what the heatmaps draw
            scores = q @ k.transpose(-2, -1) / math.sqrt(k.size(-1))  # (B, nh, T, S); sqrt(d_k) keeps softmax soft
            weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            y = F.dropout(weights, dropout, self.training) @ v
        else:  # the same in one fused kernel (flash attention on a GPU)
            y, weights = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout), None
        return self.out(y.transpose(1, 2).reshape(B, T, d)), weights  # heads concatenated: (B, T, d_model)

class Sublayers(nn.Module):
    """Section 3.1 and 5.4: each sub-layer's output goes through dropout and is added to its input (a residual
    connection) and normalised: norm(x + dropout(sublayer(x))), post-LN. Pre-LN, x + dropout(sublayer(norm(x))), keeps
    a path from input to output that no normalisation rescales, and trains without a careful warmup (Xiong et al.).
    Measured here (2+2 layers, 10 minutes): 44.6% dev pre-LN, 44.5% post-LN; pre-LN is the default for its safety."""

    def __init__(self, config, count):
        super().__init__()
        self.norm_first, self.dropout = config.norm_first, nn.Dropout(config.dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(config.d_model) for _ in range(count))
        self.feed_forward = nn.Sequential(  # section 3.3: at every position, FFN(x) = max(0, x W1 + b1) W2 + b2
            nn.Linear(config.d_model, config.d_ff), nn.ReLU(), nn.Dropout(config.dropout),
            nn.Linear(config.d_ff, config.d_model))

    def before(self, x, i):  # what sub-layer i reads
        return self.norms[i](x) if self.norm_first else x

    def after(self, x, output, i):  # sub-layer i's output joins the residual stream
        return x + self.dropout(output) if self.norm_first else self.norms[i](x + self.dropout(output))

# %% The encoder: layers of self-attention over the input characters, padding masked
class EncoderLayer(Sublayers):
    def __init__(self, config):
        super().__init__(config, 2)
        self.self_attention = MultiHeadAttention(config)

    def forward(self, x, mask):  # x (B, S, d_model), mask (B, 1, 1, S): True at real characters
        h = self.before(x, 0)
        x = self.after(x, self.self_attention(h, self.self_attention.keys_values(h), mask)[0], 0)
        return self.after(x, self.feed_forward(self.before(x, 1)), 1)

class Encoder(nn.Module):
    def __init__(self, config, vocab_size):
        super().__init__()
        self.embedding = Embedding(vocab_size, config)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))
        self.norm = nn.LayerNorm(config.d_model) if config.norm_first else nn.Identity()  # pre-LN ends unnormalised

    def forward(self, source, mask):
        x = self.embedding(source)  # (B, S, d_model)
        for layer in self.layers:
            x = layer(x, mask[:, None, None, :])
        return self.norm(x)

# %% The decoder: masked self-attention over what it wrote, cross-attention to the encoder, a cache for decoding
class DecoderLayer(Sublayers):
    def __init__(self, config):
        super().__init__(config, 3)
        self.self_attention, self.cross_attention = MultiHeadAttention(config), MultiHeadAttention(config)

    def forward(self, x, cache, cross_keys_values, memory_mask, need_weights=False):
        """x (B, T, d_model): T new positions; cache (B, 2, nh, t, d_k): the keys and values of the t positions before.
        Returns x, the cache grown by the T new positions, and the cross-attention weights (B, nh, T, S) if asked."""
        h = self.before(x, 0)
        cache = torch.cat([cache, self.self_attention.keys_values(h)], dim=3)  # earlier positions are not recomputed
        # The causal mask (section 3.2.3): new position t + i sees positions 0 .. t + i, never a later one.
        causal = torch.ones(x.size(1), cache.size(3), dtype=torch.bool, device=x.device).tril(cache.size(3) - x.size(1))
        x = self.after(x, self.self_attention(h, cache, causal)[0], 0)
        # Cross-attention: queries from the decoder, keys and values from the encoder's output (computed once).
        h, weights = self.cross_attention(self.before(x, 1), cross_keys_values, memory_mask[:, None, None, :],
                                          need_weights)
        x = self.after(x, h, 1)
        return self.after(x, self.feed_forward(self.before(x, 2)), 2), cache, weights

class Decoder(nn.Module):
    def __init__(self, config, vocab_size):
        super().__init__()
        self.embedding = Embedding(vocab_size, config)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.decoder_layers))
        self.norm = nn.LayerNorm(config.d_model) if config.norm_first else nn.Identity()
        self.output = nn.Linear(config.d_model, vocab_size)

    def forward(self, previous_tokens, state, encoded, need_weights=False):
        """Runs T positions after the t in state (B, L, 2, nh, t, d_k): logits (B, T, V), the next state, and the
        cross-attention weights (B, L, T, S), heads averaged, if asked. Teacher forcing runs the whole target at once
        (T = target length, t = 0); decoding feeds back one character at a time (T = 1), each costing one position."""
        memory_mask, cross_keys_values = encoded
        x, caches, weights = self.embedding(previous_tokens, start=state.size(4)), [], []
        for i, layer in enumerate(self.layers):
            x, cache, layer_weights = layer(x, state[:, i], cross_keys_values[:, i], memory_mask, need_weights)
            caches.append(cache)
            weights.append(layer_weights)
        logits = self.output(self.norm(x))  # (B, T, V); the softmax is inside the loss / log_softmax
        return logits, torch.stack(caches, dim=1), torch.stack(weights, dim=1).mean(2) if need_weights else None

class Seq2Seq(nn.Module):
    def __init__(self, config, vocabularies):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config, len(vocabularies["source"]))
        self.decoder = Decoder(config, len(vocabularies["target"]))

    def encode(self, source, source_lengths):
        """Reads the input once: returns what every decoder step looks at (batch in dim 0) and the first state, an
        empty cache. The cross-attention keys and values of the encoder's output are computed here, once per word."""
        memory_mask = torch.arange(source.size(1), device=source.device)[None, :] < source_lengths[:, None]  # (B, S)
        memory = self.encoder(source, memory_mask)
        cross_keys_values = torch.stack([layer.cross_attention.keys_values(memory) for layer in self.decoder.layers], 1)
        B, L, _, nh, S, d_k = cross_keys_values.shape
        return (memory_mask, cross_keys_values), memory.new_zeros(B, L, 2, nh, 0, d_k)

    def forward(self, source, source_lengths, target_inputs):
        encoded, state = self.encode(source, source_lengths)
        return self.decoder(target_inputs, state, encoded)[0]  # teacher forcing: every position at once

def select_state(state, rows):
    """Picks rows of the decoder state, the cache (B, L, 2, nh, t, d_k), for beam search."""
    return state.index_select(0, rows)

# %% Training
def sequence_loss(logits, targets, label_smoothing=0.0):
    """Mean cross-entropy over the real target characters (padding ignored), with the softmax in float32."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=PAD,
                           label_smoothing=label_smoothing)

@torch.no_grad()
def update_average(averaged, model, decay, step):
    """Exponential moving average of the weights: averaged <- decay * averaged + (1 - decay) * model. Adam's noisy
    steps bounce around the bottom of a valley; the average of the last ~1 / (1 - decay) steps sits nearer its middle
    and usually scores better than the last step's weights, at no cost in training (iterate averaging: Polyak and
    Juditsky 1992). The warm-up (1 + step) / (10 + step) forgets the random initial weights quickly."""
    decay = min(decay, (1 + step) / (10 + step))
    for average, weight in zip(averaged.parameters(), model.parameters()):
        average.lerp_(weight, 1 - decay)

def learning_rate_at(config, progress):
    """Warmup: the rate rises linearly over warmup_steps, while Adam's running averages of the gradient are still
    poor estimates (section 5.3); after that the plateau rule of train() halves it when dev accuracy stops rising."""
    return progress["learning_rate"] * min(1.0, (progress["step"] + 1) / config.warmup_steps)

def train(config, given):
    out_dir, clock = Path(config.out_dir), time.time()
    config, checkpoint = start_or_resume(out_dir, config, given)
    device, dtype = pick_device(config)
    train_pairs, dev_pairs = read_lexicon(config, "train"), read_lexicon(config, "dev")
    # The vocabularies come from the training split only: dev characters never seen in training become <unk>.
    vocabularies = checkpoint["vocabularies"] if checkpoint else {
        "source": build_vocabulary(s for s, _ in train_pairs), "target": build_vocabulary(t for _, t in train_pairs)}
    torch.manual_seed(config.seed)
    model = Seq2Seq(config, vocabularies).to(device)
    averaged = copy.deepcopy(model) if config.average_decay else model  # the weights dev scores and best.pt keeps
    compiled = torch.compile(model) if config.compile or config.compile is None and device.type == "cuda" else model
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, fused=device.type in ("cpu", "cuda"))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)  # float16 gradients would underflow
    states = {"model": model, "averaged": averaged, "optimizer": optimizer, "scaler": scaler}
    generator = torch.Generator().manual_seed(config.seed)  # draws the order of the batches
    progress = dict(epoch=0, step=0, step_in_epoch=0, epoch_order=generator.get_state(), seconds=0.0, dev_seconds=0.0,
                    best_dev_accuracy=-1.0, epochs_without_improvement=0, learning_rate=config.learning_rate)
    if checkpoint:  # continue exactly: weights, Adam's moments, averaged weights, counters and random state
        progress, clock = checkpoint["progress"], clock - checkpoint["progress"]["seconds"]
        for name, value in states.items():
            value.load_state_dict(checkpoint[name])
        torch.set_rng_state(checkpoint["torch_rng"])
        if torch.cuda.is_available() and checkpoint["cuda_rng"]:
            torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])
    print(f"{len(train_pairs)} training, {len(dev_pairs)} dev rows, {sum(p.numel() for p in model.parameters()):,} "
          f"parameters, {device}, {dtype}, from step {progress['step']}")

    def out_of_time():  # time for a dev pass, the final search (< K dev passes), Python's start and the last files
        reserve = (2 + config.beam_size) * progress["dev_seconds"] + 10
        return 0 < config.max_minutes * 60 < time.time() - clock + reserve

    def save_last():
        progress["seconds"] = time.time() - clock
        save_checkpoint(out_dir / "last.pt", states, config, vocabularies, progress)

    log, stop = open(out_dir / "log.jsonl", "a" if checkpoint else "w"), ""
    try:
        while not (stop := f"early stop: no better dev accuracy in {config.patience} epochs" * (
                progress["epochs_without_improvement"] >= config.patience) or f"trained {config.epochs} epochs" * (
                progress["epoch"] >= config.epochs) or "time is up" * out_of_time()):
            # The order comes from the generator state saved at the epoch's start: a resumed run draws it again.
            batches = batches_by_length(train_pairs, config.batch_size, generator.set_state(progress["epoch_order"]))
            start, first, loss_sum, words = time.time(), progress["step_in_epoch"], 0.0, 0
            model.train()
            for indices in tqdm(batches[first:], desc=f"epoch {progress['epoch'] + 1}", leave=False, mininterval=1):
                source, lengths, target_inputs, target_outputs = make_batch([train_pairs[i] for i in indices],
                                                                            vocabularies, device)
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate_at(config, progress)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    logits = compiled(source, lengths, target_inputs)
                loss = sequence_loss(logits, target_outputs, config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if config.grad_clip > 0:  # an occasional huge gradient cannot wreck the model
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                if averaged is not model:
                    update_average(averaged, model, config.average_decay, progress["step"])
                progress["step"], progress["step_in_epoch"] = progress["step"] + 1, progress["step_in_epoch"] + 1
                loss_sum, words = loss_sum + loss.item() * len(indices), words + len(indices)
                if out_of_time():  # stop inside the epoch; the dev pass below still scores what was trained
                    break
            seconds, steps = time.time() - start, progress["step_in_epoch"] - first
            candidates = transliterate(averaged, [s for s, _ in dev_pairs], vocabularies, 1, config.max_output_length)
            accuracy = transliteration_metrics(dev_pairs, [[c for c, _ in o] for o in candidates])["word_accuracy"]
            progress["dev_seconds"], improved = time.time() - start - seconds, accuracy > progress["best_dev_accuracy"]
            record = {"epoch": round(progress["epoch"] + progress["step_in_epoch"] / len(batches), 3),
                      "step": progress["step"], "loss": loss_sum / max(words, 1), "dev_accuracy": accuracy,
                      "lr": optimizer.param_groups[0]["lr"], "ms_per_step": 1000 * seconds / max(steps, 1),
                      "words_per_sec": words / seconds, "minutes": (time.time() - clock) / 60}
            print(" | ".join(f"{key} {value:.4g}" for key, value in record.items()) + " (best)" * improved + "\n  " +
                  ", ".join(f"{s} -> {o[0][0]}" for (s, _), o in zip(dev_pairs[:4], candidates)))
            print(json.dumps(record), file=log, flush=True)
            if progress["step_in_epoch"] == len(batches):  # a whole epoch: the next one draws a new order
                progress.update(epoch=progress["epoch"] + 1, step_in_epoch=0, epoch_order=generator.get_state())
            if improved:
                progress.update(best_dev_accuracy=accuracy, epochs_without_improvement=0)
                save_checkpoint(out_dir / "best.pt", {"model": averaged}, config, vocabularies, progress)
            else:  # the plateau schedule: a smaller step once dev accuracy stops rising
                progress["epochs_without_improvement"] += 1
                progress["learning_rate"] *= config.lr_decay
            save_last()
    except KeyboardInterrupt:  # keep the last finished step: --resume continues from exactly there
        save_last()
        raise
    finally:  # the progress bar closes itself when its loop ends, even by Ctrl-C
        log.close()
    print(f"{stop} after {(time.time() - clock) / 60:.1f} min")
    if (out_dir / "best.pt").exists():
        model.load_state_dict(load_checkpoint(out_dir / "best.pt")["model"])  # the weights of the best dev accuracy
        return evaluate_and_report(model, dev_pairs, vocabularies, config, out_dir, "dev")

# %% Decoding: beam search (greedy is a beam of one), many words at once
@torch.no_grad()
def beam_search(model, source, source_lengths, beam_size, max_length, length_penalty=0.5):
    """Keeps the beam_size best partial outputs per word, all words of the batch at once (B * K decoder rows); with
    beam_size 1 it is greedy decoding, which feeds back the most likely character at every step. Hypotheses are ranked
    by log P(y) / len(y)**length_penalty (len counts <eos>) so that longer words are not punished just for having more
    factors below 1: the simpler len**alpha form of the length normalisation of Wu et al. 2016, section 7
    (https://arxiv.org/abs/1609.08144). Returns ids (B, K, T), normalised scores and log-probabilities (B, K)."""
    batch_size, K, device = source.size(0), beam_size, source.device
    encoded, state = model.encode(source, source_lengths)
    encoded = [None if part is None else part.repeat_interleave(K, 0) for part in encoded]  # K copies of each word
    state = select_state(state, torch.arange(batch_size, device=device).repeat_interleave(K))
    tokens = torch.full((batch_size * K, 1), SOS, dtype=torch.long, device=device)
    sequences = tokens[:, :0]
    # At the start all K copies are the same; only the first is live, so the first step picks K different characters.
    log_probs = torch.full((batch_size, K), float("-inf"), device=device)
    log_probs[:, 0] = 0.0
    lengths = torch.zeros(batch_size, K, device=device)
    finished = torch.zeros(batch_size, K, dtype=torch.bool, device=device)
    first_row = (torch.arange(batch_size, device=device) * K)[:, None]  # (B, 1)
    for _ in range(max_length):
        logits, state, _ = model.decoder(tokens, state, encoded)
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

@torch.no_grad()
def transliterate(model, words, vocabularies, beam_size, max_length, length_penalty=0.5, batch_size=256):
    """Returns, per word, a list of (candidate, log-probability), best first."""
    model.eval()
    results, distinct = {}, sorted(set(words), key=lambda w: (len(w), w))  # similar lengths share a batch
    for start in range(0, len(distinct), batch_size):
        chunk = distinct[start:start + batch_size]
        source, lengths, _, _ = make_batch([(w, "") for w in chunk], vocabularies, next(model.parameters()).device)
        ids, _, log_probs = beam_search(model, source, lengths, beam_size, max_length, length_penalty)
        for word, rows, scores in zip(chunk, ids.tolist(), log_probs.tolist()):
            results[word] = [(decode_ids(row, vocabularies["target"]), score) for row, score in zip(rows, scores)]
    return [results[w] for w in words]

# %% Metrics
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
    references, first = defaultdict(set), {source: options[0] for (source, _), options in zip(pairs, candidates)}
    for source, reference in pairs:
        references[source].add(reference)
    return {"word_accuracy": sum(options[0] == ref for (_, ref), options in zip(pairs, candidates)) / len(pairs),
            "any_reference_accuracy": sum(first[word] in refs for word, refs in references.items()) / len(references),
            "top_k_accuracy": sum(ref in options for (_, ref), options in zip(pairs, candidates)) / len(pairs),
            "cer": sum(edit_distance(options[0], ref) for (_, ref), options in zip(pairs, candidates))
            / sum(len(ref) for _, ref in pairs)}

# %% Attention heatmaps
@torch.no_grad()
def attention_of(model, words, outputs, vocabularies):
    """The attention weights of writing each given output for each input word, from one teacher-forced pass: row t is
    the step that wrote character t, the last real row <eos>. None for a model without attention."""
    source, lengths, target_inputs, _ = make_batch(list(zip(words, outputs)), vocabularies,
                                                   next(model.parameters()).device)
    encoded, state = model.eval().encode(source, lengths)
    return model.decoder(target_inputs, state, encoded, need_weights=True)[2]

def save_attention_heatmaps(weights, words, outputs, path):
    """Draws which input characters (x) the decoder attended to while writing each output character (y): one column
    per word; weights (B, T, S), or (B, rows, T, S) for one row of pictures per layer."""
    import matplotlib.figure

    weights = weights[:, None] if weights.dim() == 3 else weights  # (B, layers, T, S)
    layers = weights.size(1)
    # Each glyph comes from the first font in the list that has it: an installed Noto Sans font covers its script.
    fonts = sorted({f.name for f in matplotlib.font_manager.fontManager.ttflist if "Noto Sans" in f.name})
    with matplotlib.rc_context({"font.family": fonts + ["DejaVu Sans"]}), warnings.catch_warnings(record=True) as lost:
        warnings.simplefilter("always")
        figure = matplotlib.figure.Figure(figsize=(4 * len(words), 4.5 * layers))
        for (row, column), axes in zip(itertools.product(range(layers), range(len(words))),
                                       figure.subplots(layers, len(words), squeeze=False).flat):
            word, steps = words[column], list(outputs[column]) + ["<eos>"]
            axes.imshow(weights[column, row, :len(steps), :len(word)].float().cpu().numpy(), vmin=0, vmax=1)
            axes.set(xticks=range(len(word)), xticklabels=word, yticks=range(len(steps)), yticklabels=steps, xlabel=
                     "input character", title=f"{word} -> {outputs[column]}" + f", layer {row + 1}" * (layers > 1))
        figure.tight_layout()
        write_atomically(path, lambda file: figure.savefig(file, format="png", dpi=100))
    if any("missing from font" in str(warning.message) for warning in lost):
        print(f"no installed font has the glyphs of {outputs[0]!r}, so {Path(path).name} shows boxes; install a Noto "
              f"Sans font for this script (Debian/Ubuntu: fonts-noto)")

# %% Scoring a lexicon (--evaluate), transliterating words (--translit)
def evaluate_and_report(model, pairs, vocabularies, config, out_dir, title):
    """Beam-searches every row; prints the metrics, writes predictions-TITLE.tsv and attention-TITLE.png."""
    tag, start = title.removesuffix(".tsv"), time.time()
    candidates = transliterate(model, [source for source, _ in pairs], vocabularies, config.beam_size,
                               config.max_output_length, config.length_penalty)
    candidates = [[text for text, _ in options] for options in candidates]
    metrics = transliteration_metrics(pairs, candidates)
    print(f"{title} (beam {config.beam_size}, {len(pairs)} rows, {time.time() - start:.1f}s): "
          f"word accuracy {metrics['word_accuracy']:.2%} | any-reference {metrics['any_reference_accuracy']:.2%} | "
          f"top-{config.beam_size} {metrics['top_k_accuracy']:.2%} | CER {metrics['cer']:.2%}\n  wrong: " +
          ", ".join([f"{s} -> {c[0]} (not {r})" for (s, r), c in zip(pairs, candidates) if c[0] != r][:4]))
    lines = ["input\treference\tprediction\tcorrect\n"] + [f"{s}\t{r}\t{c[0]}\t{int(c[0] == r)}\n"
                                                           for (s, r), c in zip(pairs, candidates)]
    write_atomically(Path(out_dir) / f"predictions-{tag}.tsv", lambda file: file.write("".join(lines).encode()))
    best = dict(zip((s for s, _ in pairs), (c[0] for c in candidates)))  # each input word once, in order
    words = list(best)[:config.heatmaps]
    if words and (weights := attention_of(model, words, [best[w] for w in words], vocabularies)) is not None:
        save_attention_heatmaps(weights, words, [best[w] for w in words], Path(out_dir) / f"attention-{tag}.png")
    return {**metrics, "seconds": time.time() - start}

# %% Plumbing: data files, checkpoints, devices, command line (skip on a first read)
def read_lexicon(config, name):
    """(input, output) pairs from native<TAB>romanized<TAB>count lines (strictly): a split or a lexicon file."""
    folder, pairs = Path(config.data_dir or Path("data") / "dakshina" / config.lang), []
    path = folder / f"{config.lang}.translit.sampled.{name}.tsv" if name in ("train", "dev", "test") else Path(name)
    if path.parent == folder and not (folder / f"{config.lang}.translit.sampled.train.tsv").is_file():
        raise SystemExit(f"error: {folder} holds no prepared {config.lang} lexicons; run `python prepare_data.py "
                         f"dakshina --lang {config.lang}` first, or pass --data_dir with such a folder")
    try:
        with open(path, encoding="utf-8-sig") as file:  # -sig: a byte order mark is not part of the first word
            for number, line in enumerate(file, 1):
                columns = [column.strip() for column in line.rstrip("\r\n").split("\t")]
                if line.strip() and (len(columns) not in (2, 3) or not all(columns[:2])
                                     or len(columns) == 3 and not columns[2].isdigit()):
                    raise SystemExit(f"error: line {number} of {path} is {line.rstrip()!r}, not native<TAB>romanized"
                                     f"[<TAB>count] with both words and a whole count (a lexicon has no header)")
                if line.strip():
                    pairs.append(tuple(columns[1::-1] if config.direction == "roman2native" else columns[:2]))
    except UnicodeDecodeError:
        raise SystemExit(f"error: {path} is not UTF-8 text; save the lexicon as UTF-8 and try again")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise SystemExit(f"error: there is no lexicon file {path}; give a .tsv file, or dev, test or train")
    if not pairs:
        raise SystemExit(f"error: {path} has no lexicon lines; give a file of native<TAB>romanized<TAB>count lines")
    return pairs[:{"train": config.max_train_rows, "dev": config.max_dev_rows}.get(name) or None]

def write_atomically(path, write):
    """write(file) into a new temporary file beside path, renamed to path when complete: never half a file."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise

def save_checkpoint(path, states, config, vocabularies, progress):
    """best.pt holds the weights dev scored; last.pt also what continuing needs: optimizer, averaged weights, RNGs."""
    checkpoint = {"format": CHECKPOINT_FORMAT, "config": dataclasses.asdict(config), "vocabularies": vocabularies,
                  "progress": dict(progress), "torch_rng": torch.get_rng_state(),  # dropout draws from these
                  "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                  **{name: value.state_dict() for name, value in states.items()}}
    write_atomically(path, lambda file: torch.save(checkpoint, file))

def load_checkpoint(path):
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SystemExit(f"error: there is no checkpoint {path}; train one with `python {SCRIPT}` or name one")
    except Exception as error:  # a folder, a truncated file, or one holding more than tensors and plain values
        raise SystemExit(f"error: could not read checkpoint {path} ({type(error).__name__}); it is damaged or not a "
                         f"{SCRIPT} checkpoint, so train a new one")
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise SystemExit(f"error: {path} is not a checkpoint of this version of {SCRIPT}; train a new one")
    return checkpoint

def start_or_resume(out_dir, config, given):
    """Refuses to overwrite a run; a resumed one keeps its settings but for those given again: (config, last.pt)."""
    held = [name for name in ("best.pt", "last.pt") if (out_dir / name).exists()]
    if held and not config.resume:
        raise SystemExit(f"error: {out_dir} already holds a run ({', '.join(held)}); continue it with --resume, or "
                         f"pick another --out_dir")
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = load_checkpoint(out_dir / "last.pt") if config.resume else None
    return (model_from_checkpoint(checkpoint, given, checkpoint["config"])[1] if checkpoint else config), checkpoint

def model_from_checkpoint(checkpoint, given, kept=None):
    """A checkpoint's model: its shape and data from the checkpoint, decoding and output options from this command."""
    saved = checkpoint["config"]
    for name in (name for name in MODEL_FIELDS if name in given and given[name] != saved[name]):
        raise SystemExit(f"error: the checkpoint was trained with --{name} {saved[name]}, not {given[name]}; drop "
                         f"that option or train a new model")
    config = Config(**{**(kept or {name: saved[name] for name in MODEL_FIELDS + ("data_dir",)}), **given})
    model = Seq2Seq(config, checkpoint["vocabularies"])
    model.load_state_dict(checkpoint["model"])
    return model.to(pick_device(config)[0]).eval(), config, checkpoint["vocabularies"]

def pick_device(config):
    """The device and training's autocast dtype (mixed precision: weights, Adam and the loss stay float32)."""
    name, dtype = config.device, config.dtype
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    usable = ["cpu", "mps"][:1 + torch.backends.mps.is_available()] + ["cuda"] * torch.cuda.is_available()
    if name not in usable + [f"cuda:{i}" for i in range(torch.cuda.device_count())]:
        raise SystemExit(f"error: --device {name} is not one this PyTorch can use here: {', '.join(usable)} or auto")
    if dtype == "auto":  # a CPU without bf16 instructions runs bf16 autocast far slower than float32
        dtype = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if name.startswith("cuda") else "float32"
    return torch.device(name), getattr(torch, dtype)

def check_config(config, given):
    """Every mistake on the command line that we can name, in one place."""
    values = {field.name: getattr(config, field.name) for field in dataclasses.fields(Config)}
    problems = [f"--{name} must be a number of at least 0" for name, value in values.items() if type(value) in
                (int, float) and not 0 <= value < math.inf] + [f"--{name} must be at least 1" for name, value in
                values.items() if type(value) is int and value < 1 and name not in ZERO_ALLOWED]
    problems += [f"--{name} must be below 1" for name in ("dropout", "label_smoothing", "average_decay") if
                 values[name] >= 1] + [f"--{name} must be at most 1" for name in ("lr_decay",) if values[name] > 1]
    if config.d_model % max(config.n_head, 1):
        problems.append(f"--d_model {config.d_model} must be a multiple of --n_head {config.n_head}: each head gets "
                        f"an equal share")
    if ("translit" in given and not config.translit.split() or "evaluate" in given and not config.evaluate.strip()
            or config.translit and config.evaluate):
        problems.append('give either --translit "some words" or --evaluate with a .tsv file, dev, test or train')
    if problems:
        raise SystemExit("error: " + "; ".join(problems))

def parse_config(argv):
    """Builds the parser from Config, help from the field comments; returns the config and the options given."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0], argument_default=argparse.SUPPRESS,
                                     allow_abbrev=False)  # a misspelled or shortened flag is an error, never a guess
    try:
        helps = dict(re.findall(r"^\s+(\w+): [^=]+ = .*?  # (.*)$", inspect.getsource(Config), flags=re.MULTILINE))
    except (OSError, TypeError):  # no source to read, as in some notebooks
        helps = {}
    for field in dataclasses.fields(Config):
        choices = typing.get_args(field.type) if typing.get_origin(field.type) is typing.Literal else None
        kind = {"action": argparse.BooleanOptionalAction} if bool in (field.type, *typing.get_args(field.type)) \
            else {"type": type(choices[0]) if choices else field.type, "choices": choices}
        parser.add_argument(f"--{field.name}", **kind, help=f"{helps.get(field.name, '')} (default: {field.default!r})")
    if argv is None:  # a notebook kernel's own arguments are not ours
        argv = [] if "ipykernel" in sys.modules else sys.argv[1:]
    arguments, unknown = parser.parse_known_args(argv)
    if unknown:
        close = {"--precision": ["--dtype"]}.get(unknown[0].split("=")[0]) or difflib.get_close_matches(  # renamed
            unknown[0].split("=")[0], [o for a in parser._actions for o in a.option_strings])
        raise SystemExit(f"error: unrecognized arguments: {' '.join(unknown)}" + f"; did you mean {close[0]}?" * bool(
            close))
    return Config(**vars(arguments)), vars(arguments)

def main(argv=None):
    config, given = parse_config(argv)
    check_config(config, given)
    try:
        if not (config.evaluate or config.translit):
            return train(config, given)
        checkpoint_path = Path(config.checkpoint or Path(config.out_dir) / "best.pt")
        model, config, vocabularies = model_from_checkpoint(load_checkpoint(checkpoint_path), given)
        if config.translit:  # the beam's candidates for each word, best first, with P(candidate) in brackets
            lower = not any(c.isupper() for c in vocabularies["source"])  # Dakshina's romanizations are lower case
            words = [word.lower() if lower else word for word in config.translit.split()]
            results = transliterate(model, words, vocabularies, config.beam_size, config.max_output_length,
                                    config.length_penalty)
            print("\n".join(f"{word}: " + "  ".join(f"{text} ({math.exp(p):.2f})" for text, p in options)
                            for word, options in zip(words, results)))
            return results
        out_dir = config.out_dir if "out_dir" in given else checkpoint_path.parent  # beside the checkpoint it scores
        return evaluate_and_report(model, read_lexicon(config, config.evaluate), vocabularies, config, out_dir,
                                   Path(config.evaluate).name)
    except KeyboardInterrupt:  # one line, not a traceback; train() has saved the last finished step in last.pt
        raise SystemExit("interrupted")

# %% Run
if __name__ == "__main__":
    main()
