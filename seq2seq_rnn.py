"""Character-level sequence-to-sequence transliteration: an RNN, GRU or LSTM encoder-decoder with attention.

Type Hindi in Latin letters ("namaste"), get Devanagari ("नमस्ते"). An encoder RNN reads the input
characters; a decoder RNN writes the output one character at a time, starting from the encoder's final state and looking
back at every input character through attention. seq2seq_transformer.py solves the same task with the same data, metrics
and command line, so `diff seq2seq_rnn.py seq2seq_transformer.py` shows what changes: the model.
References: Sutskever et al. 2014, https://arxiv.org/abs/1409.3215; Bahdanau et al. 2015 (additive attention),
https://arxiv.org/abs/1409.0473; Luong et al. 2015 (dot attention, input feeding), https://arxiv.org/abs/1508.04025

Run:
  python prepare_data.py dakshina --lang hi   # once: data/dakshina/hi/
  python seq2seq_rnn.py --max_minutes 20      # CPU: 20 minutes on 2 cores, ~48% dev word accuracy (beam 5)
  python seq2seq_rnn.py --device cuda         # GPU; Colab: paste this file into a cell, or !python seq2seq_rnn.py
  python seq2seq_rnn.py --translit "namaste duniya" --checkpoint out-seq2seq-rnn/best.pt
  python seq2seq_rnn.py --evaluate dev --checkpoint out-seq2seq-rnn/best.pt   # or test, or any lexicon .tsv file
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
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence
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
    cell: typing.Literal["rnn", "gru", "lstm"] = "lstm"  # recurrent cell of encoder and decoder (rnn: tanh)
    embedding_size: int = 64  # size of the character embeddings
    hidden_size: int = 256  # size of the recurrent state (per direction)
    encoder_layers: int = 1  # stacked recurrent layers in the encoder
    decoder_layers: int = 1  # stacked recurrent layers in the decoder
    bidirectional: bool = True  # the encoder reads the word both ways
    dropout: float = 0.2  # dropout on embeddings, between layers and before the output layer
    attention: typing.Literal["none", "dot", "additive"] = "dot"  # dot: Luong's; additive: Bahdanau's
    input_feeding: bool = True  # each decoder step also reads the previous step's attentional state (with attention)
    # training
    epochs: int = 40  # most passes over the training split
    batch_size: int = 64  # words per step
    learning_rate: float = 2e-3  # Adam step size at the start
    lr_decay: float = 0.5  # multiply the learning rate by this after an epoch without a better dev accuracy
    teacher_forcing: float = 1.0  # probability of feeding the reference character (not the model's guess) per step
    label_smoothing: float = 0.1  # train towards (1 - this) * one-hot + this * uniform over all output symbols
    grad_clip: float = 1.0  # clip the gradient norm to this (0 = off)
    average_decay: float = 0.999  # dev and best.pt use a moving average of the weights (decay per step; 0 = off)
    patience: int = 5  # stop after this many epochs without a better dev accuracy
    max_minutes: float = 0.0  # the whole run, final evaluation included, ends within this many minutes (0 = off)
    resume: bool = False  # continue from out_dir/last.pt
    seed: int = 1337  # seed for initialization, batch order, dropout and teacher forcing
    # decoding and evaluation
    beam_size: int = 5  # hypotheses kept by beam search (1 = greedy)
    length_penalty: float = 0.5  # rank hypotheses by log-probability / length**length_penalty
    max_output_length: int = 40  # longest output word, in characters
    checkpoint: str = ""  # checkpoint for --evaluate and --translit (default: out_dir/best.pt)
    evaluate: str = ""  # score a lexicon: a .tsv file, or dev, test or train of the checkpoint's data
    translit: str = ""  # transliterate these space-separated words with --checkpoint and print the top candidates
    heatmaps: int = 4  # words to draw attention heatmaps for
    # system
    out_dir: str = "out-seq2seq-rnn"  # checkpoints, log.jsonl, predictions-dev.tsv and attention-dev.png go here
    device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps
    dtype: typing.Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # autocast (auto: bf16 on CUDA, else fp32)

SCRIPT, CHECKPOINT_FORMAT = "seq2seq_rnn.py", "nanoverse-seq2seq-rnn-v2"
# What a checkpoint's model is: its shape and its data. --evaluate, --translit and --resume take these from it.
MODEL_FIELDS = ("lang", "direction", "cell", "embedding_size", "hidden_size", "encoder_layers", "decoder_layers",
                "bidirectional", "attention", "input_feeding")
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

# %% The encoder: a (bidirectional) RNN over the input characters
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

# %% The bridge: the encoder's final state becomes the decoder's first state
class Bridge(nn.Module):
    """PyTorch stacks the final states as (layers * directions, B, H), layer by layer, forward before backward. With a
    bidirectional encoder each layer's two directions are concatenated and projected back to H (Bahdanau et al. start
    from the backward state through tanh; we use both). Decoder layer i starts from encoder layer i + max(encoder_layers
    - decoder_layers, 0), at most the top: a shallower decoder takes the top layers, a deeper one repeats the top."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.hidden_projection = nn.Linear(2 * config.hidden_size, config.hidden_size) if config.bidirectional else None
        self.cell_projection = (nn.Linear(2 * config.hidden_size, config.hidden_size)
                                if config.bidirectional and config.cell == "lstm" else None)
        offset = max(config.encoder_layers - config.decoder_layers, 0)
        self.layer_for_decoder = [min(i + offset, config.encoder_layers - 1) for i in range(config.decoder_layers)]

    def convert(self, state, projection, activation):
        if projection is not None:  # (layers * 2, B, H) -> (layers, 2, B, H) -> both directions side by side
            state = state.view(self.config.encoder_layers, 2, *state.shape[1:])
            state = activation(projection(torch.cat([state[:, 0], state[:, 1]], dim=-1)))  # (layers, B, H)
        return state[self.layer_for_decoder].contiguous()  # (decoder_layers, B, H)

    def forward(self, final_state):
        if self.config.cell == "lstm":  # the LSTM carries a hidden state h and a memory cell c; c is not squashed
            hidden, memory_cell = final_state
            return (self.convert(hidden, self.hidden_projection, torch.tanh),
                    self.convert(memory_cell, self.cell_projection, lambda x: x))
        return self.convert(final_state, self.hidden_projection, torch.tanh)

# %% Attention: where in the input to look while writing each output character
class Attention(nn.Module):
    """Scores every input position for every decoder step, softmax over the real (unpadded) positions.

    dot (Luong et al. 2015, eq. 8): score = h_t . m_s. additive (Bahdanau et al. 2015, appendix A.1.2, Luong's
    "concat"): score = v . tanh(W h_t + U m_s). Here both score the decoder's current output h_t (Luong's order), so a
    whole teacher-forced target can go through the decoder RNN in one call (unless input feeding, see Decoder)."""

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
            scores = self.energy(torch.tanh(self.query_projection(queries)[:, :, None] + keys[:, None])).squeeze(-1)
        scores = scores.masked_fill(~memory_mask.unsqueeze(1), float("-inf"))  # padding gets exactly zero weight
        weights = scores.softmax(dim=-1)
        return weights @ memory, weights  # context (B, T, H), weights (B, T, S)

# %% The decoder, and the whole model trained with teacher forcing
class Decoder(nn.Module):
    def __init__(self, config, vocab_size):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, config.embedding_size, padding_idx=PAD)
        self.attention = Attention(config.attention, config.hidden_size) if config.attention != "none" else None
        self.input_feeding = config.input_feeding and self.attention is not None  # it feeds attention's result back
        rnn_input_size = config.embedding_size + (config.hidden_size if self.input_feeding else 0)
        self.rnn = make_rnn(config.cell, rnn_input_size, config.hidden_size, config.decoder_layers, config.dropout)
        # Luong eq. 5: the attentional hidden state tanh(W_c [context; h_t]) feeds the output layer.
        self.combine = nn.Linear(2 * config.hidden_size, config.hidden_size) if self.attention else None
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(config.hidden_size, vocab_size)

    def attend(self, outputs, memory, keys, memory_mask):
        if self.attention is None:
            return outputs, None
        context, weights = self.attention(outputs, keys, memory, memory_mask)
        return torch.tanh(self.combine(torch.cat([context, outputs], dim=-1))), weights

    def forward(self, previous_tokens, state, encoded, need_weights=False):
        """Runs T steps: logits (B, T, V), the next state, attention (B, T, S). Teacher forcing knows every input in
        advance (T = target length); free-running decoding feeds back its own guesses, one step at a time (T = 1)."""
        memory, keys, memory_mask = encoded
        embedded = self.dropout(self.embedding(previous_tokens))  # (B, T, E)
        if not self.input_feeding:  # the RNN never needs attention's result: the whole target in one call
            outputs, state = self.rnn(embedded, state)  # (B, T, H)
            outputs, weights = self.attend(outputs, memory, keys, memory_mask)
        else:
            # Input feeding (Luong et al. 2015, section 3.3): step t's RNN input is its character together with the
            # attentional state of step t - 1, so the RNN knows where it looked last (the next character of a
            # transliteration usually comes from just after it). The state carries that vector as a (1, B, H) tensor,
            # batch in dim 1 like the RNN's own state. The price is a Python loop over the T steps.
            (rnn_state, feed), steps = state, []
            for t in range(embedded.size(1)):
                output, rnn_state = self.rnn(torch.cat([embedded[:, t:t + 1], feed.transpose(0, 1)], -1), rnn_state)
                steps.append(self.attend(output, memory, keys, memory_mask))  # (B, 1, H), (B, 1, S)
                feed = steps[-1][0].transpose(0, 1)
            (outputs, weights), state = (torch.cat(parts, dim=1) for parts in zip(*steps)), (rnn_state, feed)
        logits = self.output(self.dropout(outputs))  # (B, T, V); the softmax is inside the loss / log_softmax
        return logits, state, weights

class Seq2Seq(nn.Module):
    def __init__(self, config, vocabularies):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config, len(vocabularies["source"]))
        self.bridge = Bridge(config)
        # A bidirectional encoder's outputs are 2H wide; project them to H so that attention can compare them with
        # the decoder's H-wide state. Without attention the decoder sees only the bridged final state.
        self.memory_projection = (nn.Linear(2 * config.hidden_size, config.hidden_size)
                                  if config.bidirectional and config.attention != "none" else nn.Identity())
        self.decoder = Decoder(config, len(vocabularies["target"]))

    def encode(self, source, source_lengths):
        """Reads the input once: returns what every decoder step looks at (batch in dim 0) and the first state."""
        outputs, final_state = self.encoder(source, source_lengths)
        memory = self.memory_projection(outputs)  # (B, S, H)
        memory_mask = torch.arange(source.size(1), device=source.device)[None, :] < source_lengths[:, None]
        keys = self.decoder.attention.keys(memory) if self.decoder.attention is not None else None
        state = self.bridge(final_state)
        if self.decoder.input_feeding:  # before the first step there is no attentional state yet: zeros
            state = (state, memory.new_zeros(1, source.size(0), self.config.hidden_size))
        return (memory, keys, memory_mask), state

    def forward(self, source, source_lengths, target_inputs, teacher_forcing=1.0):
        encoded, state = self.encode(source, source_lengths)
        if teacher_forcing >= 1.0:  # every decoder input is the reference: run the whole target in one call
            return self.decoder(target_inputs, state, encoded)[0]
        # Scheduled sampling at a fixed rate (Bengio et al. 2015, https://arxiv.org/abs/1506.03099, lower it as training
        # goes): per word and step, feed the reference with probability teacher_forcing, else the model's own guess.
        tokens, all_logits = target_inputs[:, :1], []
        for step in range(target_inputs.size(1)):
            logits, state, _ = self.decoder(tokens, state, encoded)
            all_logits.append(logits)
            if step + 1 < target_inputs.size(1):
                use_reference = torch.rand(tokens.shape, device=tokens.device) < teacher_forcing
                tokens = torch.where(use_reference, target_inputs[:, step + 1:step + 2], logits.argmax(-1))
        return torch.cat(all_logits, dim=1)

def select_state(state, rows):
    """Rows of the decoder state for beam search: batch in dim 1; a pair for the LSTM (h, c) and input feeding."""
    return tuple(select_state(s, rows) for s in state) if isinstance(state, tuple) else state.index_select(1, rows)

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
                    group["lr"] = progress["learning_rate"]
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    logits = model(source, lengths, target_inputs, config.teacher_forcing)
                loss = sequence_loss(logits, target_outputs, config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if config.grad_clip > 0:  # an occasional huge gradient (RNNs are prone to them) cannot wreck the model
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
                 values[name] >= 1] + [f"--{name} must be at most 1" for name in ("lr_decay", "teacher_forcing") if
                                       values[name] > 1]
    if config.attention == "none" and given.get("input_feeding"):  # asked for; by default it goes with attention only
        problems.append("--input_feeding feeds the attentional state back, so it needs --attention dot or additive")
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
