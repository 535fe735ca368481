"""Tests for seq2seq_rnn.py: shapes and gradients for every cell, attention and padding, packing, beam search,
learning a toy mapping, metrics, checkpoints, resuming and Ctrl-C, bad input, and a smoke run on Hindi Dakshina data."""

import itertools
import json
import random
import subprocess
import sys
import types

import pytest
import torch

import seq2seq_rnn as s2s
from conftest import ROOT


def tiny_config(**overrides):
    settings = dict(embedding_size=16, hidden_size=32, dropout=0.0)
    settings.update(overrides)
    return s2s.Config(**settings)


def tiny_vocabularies(source_size=12, target_size=10):
    """Vocabularies whose ids line up with random_batch(): specials, then one letter per id."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    return {"source": s2s.SPECIAL_TOKENS + list(letters[:source_size - 4]),
            "target": s2s.SPECIAL_TOKENS + list(letters.upper()[:target_size - 4])}


def tiny_model(**overrides):
    return s2s.Seq2Seq(tiny_config(**overrides), tiny_vocabularies())


def random_batch(batch_size=5, source_vocab=12, target_vocab=10, lengths=(7, 3, 5, 1, 6), target_length=6):
    """A padded batch with random real tokens (ids >= 4) and <pad> after each word's length."""
    source = torch.randint(4, source_vocab, (batch_size, max(lengths)))
    for row, length in enumerate(lengths):
        source[row, length:] = s2s.PAD
    target_inputs = torch.randint(4, target_vocab, (batch_size, target_length))
    target_inputs[:, 0] = s2s.SOS
    return source, torch.tensor(lengths), target_inputs


@torch.no_grad()
def reference_greedy(model, source, lengths, max_length):
    """Greedy decoding written plainly, one step at a time: the most likely character, fed back, until <eos>. Returns
    ids (B, T) with <pad> after each word's <eos>, the log-probability of each output and each step's attention."""
    encoded, state = model.encode(source, lengths)
    tokens, outputs, attention = torch.full((source.size(0), 1), s2s.SOS), [], []
    log_probs, finished = torch.zeros(source.size(0)), torch.zeros(source.size(0), dtype=torch.bool)
    for _ in range(max_length):
        logits, state, weights = model.decoder(tokens, state, encoded, need_weights=True)
        step_log_probs, tokens = logits[:, -1].log_softmax(-1).max(-1, keepdim=True)
        log_probs += step_log_probs[:, 0].masked_fill(finished, 0.0)
        tokens = tokens.masked_fill(finished[:, None], s2s.PAD)
        outputs.append(tokens)
        attention.append(weights)
        finished |= tokens[:, 0] == s2s.EOS
        if finished.all():
            break
    return torch.cat(outputs, 1), log_probs, (torch.cat(attention, -2) if attention[0] is not None else None)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("attention", ["none", "dot", "additive"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_every_cell_runs_forward_and_backward(cell, attention, bidirectional):
    check_forward_and_backward(tiny_config(cell=cell, attention=attention, bidirectional=bidirectional,
                                           encoder_layers=2, decoder_layers=1 if bidirectional else 3, dropout=0.1))


def check_forward_and_backward(config):
    """Logits of the right shape, a finite gradient for every parameter, and scheduled sampling runs too."""
    model = s2s.Seq2Seq(config, tiny_vocabularies())
    source, lengths, target_inputs = random_batch()
    logits = model(source, lengths, target_inputs)
    assert logits.shape == (5, 6, 10)
    s2s.sequence_loss(logits, torch.randint(1, 10, (5, 6))).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert (model(source, lengths, target_inputs, teacher_forcing=0.5).shape == logits.shape)
    return model


@pytest.mark.parametrize("input_feeding", [False, True])
def test_scheduled_sampling_feeds_the_reference_or_the_models_own_guess(input_feeding):
    """At a rate just below 1 the step-by-step loop feeds only references, so it must equal the one-call teacher
    forcing; at rate 0 it feeds only its own best guesses, which is greedy decoding."""
    torch.manual_seed(0)
    model = tiny_model(cell="lstm", attention="dot", input_feeding=input_feeding).eval()
    source, lengths, target_inputs = random_batch()
    with torch.no_grad():
        forced = model(source, lengths, target_inputs, teacher_forcing=1.0)
        almost = model(source, lengths, target_inputs, teacher_forcing=1 - 1e-12)  # torch.rand stays below it
        free = model(source, lengths, target_inputs, teacher_forcing=0.0)
    greedy, _, _ = reference_greedy(model, source, lengths, max_length=target_inputs.size(1))
    assert torch.allclose(almost, forced, atol=1e-6)
    guesses = free.argmax(-1)[:, :greedy.size(1)]
    written = greedy != s2s.PAD  # greedy pads a word after its <eos>; the loop goes on guessing
    assert written.sum() > 5 and torch.equal(guesses[written], greedy[written])


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("attention", ["dot", "additive"])
def test_input_feeding_runs_forward_and_backward(cell, attention):
    config = tiny_config(cell=cell, attention=attention, input_feeding=True, decoder_layers=2, dropout=0.1)
    model = check_forward_and_backward(config)
    assert model.decoder.rnn.input_size == config.embedding_size + config.hidden_size


def test_input_feeding_is_on_by_default_with_attention_and_off_without_it():
    vocabularies = tiny_vocabularies()
    assert s2s.Seq2Seq(tiny_config(), vocabularies).decoder.input_feeding
    plain = s2s.Seq2Seq(tiny_config(attention="none"), vocabularies).decoder
    assert not plain.input_feeding and plain.rnn.input_size == tiny_config().embedding_size  # nothing to feed back


def test_input_feeding_reads_the_previous_attentional_state():
    """Changing only the attentional state fed in at the start changes the first step's output; the state carried
    forward is that step's own attentional state, which the next step reads."""
    torch.manual_seed(0)
    model = tiny_model(cell="lstm", attention="dot", input_feeding=True).eval()
    source, lengths, target_inputs = random_batch()
    encoded, (rnn_state, feed) = model.encode(source, lengths)
    assert feed.shape == (1, 5, 32) and not feed.any()  # zeros before the first step
    first, (_, after), _ = model.decoder(target_inputs[:, :1], (rnn_state, feed), encoded)
    other, _, _ = model.decoder(target_inputs[:, :1], (rnn_state, torch.ones_like(feed)), encoded)
    assert not torch.allclose(first, other)
    assert after.shape == feed.shape and after.abs().max() <= 1 and after.abs().sum() > 0  # a tanh output
    fed, _, _ = model.decoder(target_inputs[:, 1:2], (rnn_state, after), encoded)
    unfed, _, _ = model.decoder(target_inputs[:, 1:2], (rnn_state, torch.zeros_like(after)), encoded)
    assert not torch.allclose(fed, unfed)


@pytest.mark.parametrize("encoder_layers, decoder_layers, expected", [(3, 2, [1, 2]), (2, 3, [0, 1, 1]),
                                                                       (2, 2, [0, 1])])
def test_bridge_maps_encoder_layers_to_decoder_layers(encoder_layers, decoder_layers, expected):
    config = tiny_config(cell="gru", bidirectional=False, encoder_layers=encoder_layers, decoder_layers=decoder_layers)
    final_state = torch.randn(encoder_layers, 4, 32)
    assert torch.equal(s2s.Bridge(config)(final_state), final_state[expected])


def test_bridge_joins_both_directions_of_each_layer():
    config = tiny_config(cell="lstm", bidirectional=True, encoder_layers=2, decoder_layers=2)
    bridge = s2s.Bridge(config)
    hidden, memory_cell = torch.randn(4, 3, 32), torch.randn(4, 3, 32)  # (layers * directions, B, H)
    new_hidden, new_memory_cell = bridge((hidden, memory_cell))
    assert new_hidden.shape == new_memory_cell.shape == (2, 3, 32)
    # layer 1 of the decoder comes from layer 1 forward (index 2) and layer 1 backward (index 3)
    torch.testing.assert_close(new_hidden[1], torch.tanh(bridge.hidden_projection(torch.cat([hidden[2], hidden[3]], -1))))
    torch.testing.assert_close(new_memory_cell[1], bridge.cell_projection(torch.cat([memory_cell[2], memory_cell[3]], -1)))


@pytest.mark.parametrize("kind", ["dot", "additive"])
def test_attention_weights_sum_to_one_and_ignore_padding(kind):
    attention = s2s.Attention(kind, 32)
    queries, memory = torch.randn(3, 4, 32), torch.randn(3, 6, 32)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 2, 4])[:, None]
    context, weights = attention(queries, attention.keys(memory), memory, mask)
    assert context.shape == (3, 4, 32) and weights.shape == (3, 4, 6)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4))
    assert (weights.masked_select(~mask[:, None, :].expand_as(weights)) == 0).all()
    changed = memory.clone()  # what is stored at padded positions cannot change the context
    changed[~mask] = 100.0
    torch.testing.assert_close(attention(queries, attention.keys(changed), changed, mask)[0], context)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_model_output_does_not_depend_on_padding(cell):
    model = tiny_model(cell=cell, attention="additive").eval()
    source, lengths, target_inputs = random_batch()
    logits = model(source, lengths, target_inputs)
    alone = model(source[1:2, :3], lengths[1:2], target_inputs[1:2])
    torch.testing.assert_close(logits[1:2], alone, atol=1e-5, rtol=1e-5)


def test_loss_ignores_padding():
    logits = torch.randn(2, 4, 7)
    targets = torch.tensor([[4, 5, s2s.EOS, s2s.PAD], [6, s2s.EOS, s2s.PAD, s2s.PAD]])
    changed = logits.clone()
    changed[targets == s2s.PAD] = torch.randn(3, 7) * 10
    loss = s2s.sequence_loss(logits, targets)
    torch.testing.assert_close(s2s.sequence_loss(changed, targets), loss)
    real = targets != s2s.PAD
    expected = -logits.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)[real].mean()
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_packing_gives_the_outputs_of_unpadded_sequences(cell):
    encoder = s2s.Encoder(tiny_config(cell=cell, bidirectional=True, encoder_layers=2), 12).eval()
    source, lengths, _ = random_batch()
    outputs, final_state = encoder(source, lengths)
    hidden = final_state[0] if cell == "lstm" else final_state
    for row, length in enumerate(lengths.tolist()):
        alone, alone_state = encoder.rnn(encoder.embedding(source[row:row + 1, :length]))
        alone_hidden = alone_state[0] if cell == "lstm" else alone_state
        torch.testing.assert_close(outputs[row, :length], alone[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(hidden[:, row], alone_hidden[:, 0], atol=1e-6, rtol=1e-5)
        assert (outputs[row, length:] == 0).all()


@pytest.mark.parametrize("input_feeding", [False, True])
def test_decoder_step_by_step_equals_whole_sequence(input_feeding):
    model = tiny_model(cell="lstm", attention="dot", decoder_layers=2, input_feeding=input_feeding).eval()
    source, lengths, target_inputs = random_batch()
    encoded, state = model.encode(source, lengths)
    whole, _, _ = model.decoder(target_inputs, state, encoded)
    steps = []
    for t in range(target_inputs.size(1)):
        logits, state, _ = model.decoder(target_inputs[:, t:t + 1], state, encoded)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention, input_feeding", [("none", False), ("dot", False), ("dot", True)])
def test_beam_search_with_beam_one_equals_greedy(attention, input_feeding):
    model = tiny_model(cell="gru", attention=attention, input_feeding=input_feeding).eval()
    source, lengths, _ = random_batch()
    for _ in range(100):  # make <eos> likelier until words end at different steps: finished rows must stay finished
        greedy, greedy_log_probs, _ = reference_greedy(model, source, lengths, max_length=12)
        ends = {(row + [s2s.EOS]).index(s2s.EOS) for row in greedy.tolist()}
        if len(ends) > 1:
            break
        with torch.no_grad():
            model.decoder.output.bias[s2s.EOS] += 0.02
    assert len(ends) > 1
    beam, scores, beam_log_probs = s2s.beam_search(model, source, lengths, beam_size=1, max_length=12)
    itos = [str(i) for i in range(10)]
    assert [s2s.decode_ids(row, itos) for row in greedy.tolist()] == [s2s.decode_ids(row[0], itos)
                                                                      for row in beam.tolist()]
    torch.testing.assert_close(greedy_log_probs, beam_log_probs[:, 0])  # the same words, the same probabilities


def never_special(model):
    """An untrained model that never writes <pad>, <sos> or <unk> and ends words early, so every output it decodes
    is a real word with its <eos>, as a trained model's are."""
    with torch.no_grad():
        model.decoder.output.bias[[s2s.PAD, s2s.SOS, s2s.UNK]] = -1e4
        model.decoder.output.bias[s2s.EOS] += 2.0
    return model.eval()


@pytest.mark.parametrize("input_feeding", [False, True])
def test_the_heatmaps_attention_of_a_given_output_is_what_decoding_it_attended(input_feeding):
    """attention_of (what the heatmaps draw) teacher-forces a given output; given the greedy output it must give the
    very weights greedy decoding computed while writing it."""
    torch.manual_seed(3)
    model = never_special(tiny_model(cell="lstm", attention="dot", input_feeding=input_feeding))
    vocabularies, words = tiny_vocabularies(), ["abc", "hgfe", "d"]
    source, lengths, _, _ = s2s.make_batch([(w, "") for w in words], vocabularies, "cpu")
    ids, _, greedy_weights = reference_greedy(model, source, lengths, max_length=20)
    outputs = [s2s.decode_ids(row, vocabularies["target"]) for row in ids.tolist()]
    weights = s2s.attention_of(model, words, outputs, vocabularies)
    for row, output in enumerate(outputs):
        steps = len(output) + 1  # each character and <eos>
        torch.testing.assert_close(weights[row, :steps], greedy_weights[row, :steps])


@pytest.mark.parametrize("length_penalty", [0.0, 0.5, 1.0])
def test_a_beam_wide_enough_for_every_output_finds_the_best_one(length_penalty):
    """Two real characters and at most 4 steps make 31 possible outputs (<eos> after 0-3 characters, or 4 characters
    cut off by max_length). A beam of 64 keeps them all, so its first output must be the one that scoring every
    output by teacher forcing ranks best: log P / len**length_penalty, len counting <eos>."""
    torch.manual_seed(0)
    model = s2s.Seq2Seq(tiny_config(cell="gru", attention="dot"), tiny_vocabularies(12, 6)).eval()
    with torch.no_grad():  # no <pad>, <sos> or <unk>; with this <eos> the best word is short for penalty 0, long for 1
        model.decoder.output.bias[[s2s.PAD, s2s.SOS, s2s.UNK]] = -1e4
        model.decoder.output.bias[s2s.EOS] -= 1.0
    source, lengths, _ = random_batch(batch_size=3, lengths=(5, 2, 4))
    real, max_length = [4, 5], 4
    outputs = [list(chars) + [s2s.EOS] for n in range(max_length) for chars in itertools.product(real, repeat=n)]
    outputs += [list(chars) for chars in itertools.product(real, repeat=max_length)]
    assert len(outputs) == 31
    targets = torch.tensor([output + [s2s.PAD] * (max_length - len(output)) for output in outputs])  # (31, 4)
    inputs = torch.cat([torch.full((31, 1), s2s.SOS), targets[:, :-1]], dim=1)
    sequences, scores, _ = s2s.beam_search(model, source, lengths, beam_size=64, max_length=max_length,
                                           length_penalty=length_penalty)
    best_lengths = set()
    for row in range(3):
        with torch.no_grad():
            logits = model(source[row:row + 1].expand(31, -1), lengths[row:row + 1].expand(31), inputs)
        per_step = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        log_probs = (per_step * (targets != s2s.PAD)).sum(1)
        ranked = log_probs / torch.tensor([float(len(output)) for output in outputs]) ** length_penalty
        best = outputs[int(ranked.argmax())]
        assert sequences[row, 0, :len(best)].tolist() == best
        torch.testing.assert_close(scores[row, 0], ranked.max(), atol=2e-5, rtol=1e-5)
        best_lengths.add(len(best))
    assert best_lengths == ({1} if length_penalty == 0 else {4})  # the penalty really decides between lengths


@pytest.mark.parametrize("cell, input_feeding", [("lstm", False), ("lstm", True), ("gru", True), ("rnn", True)])
def test_beam_scores_equal_teacher_forced_scores(cell, input_feeding):
    """Every hypothesis of a wide beam, scored again in one teacher-forced pass, gets the log-probability the beam
    accumulated for it: the beam carried the right rows of the decoder state (and of the fed attentional state)."""
    torch.manual_seed(0)
    config = tiny_config(cell=cell, attention="dot", input_feeding=input_feeding, decoder_layers=2)
    model = s2s.Seq2Seq(config, tiny_vocabularies()).eval()
    with torch.no_grad():
        model.decoder.output.bias[s2s.PAD] = -1e4  # <pad> only ever follows <eos>
        # an untrained decoder hardly listens to the fed vector; make it matter, so that a wrong row would show
        model.decoder.rnn.weight_ih_l0[:, config.embedding_size:] *= 10
    source, lengths, _ = random_batch()
    sequences, _, log_probs = s2s.beam_search(model, source, lengths, beam_size=4, max_length=8)
    outputs = sequences.reshape(20, -1)  # (B * K, T), <pad> after <eos>
    inputs = torch.cat([torch.full((20, 1), s2s.SOS), outputs[:, :-1]], dim=1)
    logits = model(source.repeat_interleave(4, 0), lengths.repeat_interleave(4), inputs)
    per_step = logits.log_softmax(-1).gather(-1, outputs.unsqueeze(-1)).squeeze(-1)
    rescored = (per_step * (outputs != s2s.PAD)).sum(1)
    torch.testing.assert_close(rescored, log_probs.reshape(-1), atol=2e-5, rtol=1e-5)
    assert len({tuple(row) for row in outputs.tolist()}) > 5  # the beam really holds different hypotheses


def test_weight_average_follows_its_formula():
    model = tiny_model()
    averaged = s2s.copy.deepcopy(model)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    s2s.update_average(averaged, model, 0.999, step=0)  # warm-up: decay min(0.999, 1 / 10) = 0.1
    for average, initial in zip(averaged.parameters(), start):
        torch.testing.assert_close(average, 0.1 * initial + 0.9 * (initial + 1))
    s2s.update_average(averaged, model, 0.5, step=10_000)  # past the warm-up: the decay given
    for average, initial in zip(averaged.parameters(), start):
        torch.testing.assert_close(average, 0.5 * (0.1 * initial + 0.9 * (initial + 1)) + 0.5 * (initial + 1))


def test_metrics_match_hand_computed_values():
    assert s2s.edit_distance("kitten", "sitting") == 3
    assert s2s.edit_distance("", "abc") == 3 and s2s.edit_distance("abc", "abc") == 0
    pairs = [("an", "AN"), ("an", "AM"), ("ka", "KA"), ("ga", "GAA")]
    candidates = [["AN", "AM"], ["AN", "AM"], ["KX", "KA"], ["G", "GA"]]
    metrics = s2s.transliteration_metrics(pairs, candidates)
    assert metrics["word_accuracy"] == 1 / 4  # only row 1 matches its own reference
    assert metrics["any_reference_accuracy"] == 1 / 3  # distinct inputs an (right), ka, ga
    assert metrics["top_k_accuracy"] == 3 / 4
    assert metrics["cer"] == pytest.approx((0 + 1 + 1 + 2) / (2 + 2 + 2 + 3))


def test_batches_pad_and_unseen_characters_become_unk():
    vocabularies = {"source": s2s.build_vocabulary(["ab"]), "target": s2s.build_vocabulary(["XY"])}
    source, lengths, target_inputs, target_outputs = s2s.make_batch([("ab!", "XY"), ("b", "Y")], vocabularies, "cpu")
    a, b, x, y = 4, 5, 4, 5
    assert source.tolist() == [[a, b, s2s.UNK], [b, s2s.PAD, s2s.PAD]] and lengths.tolist() == [3, 1]
    assert target_inputs.tolist() == [[s2s.SOS, x, y], [s2s.SOS, y, s2s.PAD]]  # teacher forcing reads <sos> first
    assert target_outputs.tolist() == [[x, y, s2s.EOS], [y, s2s.EOS, s2s.PAD]]
    assert s2s.decode_ids([x, y, s2s.EOS, x], vocabularies["target"]) == "XY"
    model = s2s.Seq2Seq(tiny_config(), vocabularies)
    assert len(s2s.transliterate(model, ["a!b", "bb"], vocabularies, beam_size=2, max_length=5)[0]) == 2


def write_lexicons(folder, pairs_by_split, lang="hi"):
    """Writes native<TAB>roman<TAB>count files as prepare_data.py does: folder/<lang>.translit.sampled.<split>.tsv."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, pairs in pairs_by_split.items():
        lines = [f"{native}\t{roman}\t1" for roman, native in pairs]
        (folder / f"{lang}.translit.sampled.{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def reversal_data(folder, train_size=1200, dev_size=100):
    rng = random.Random(0)
    words = {"".join(rng.choice("abcdef") for _ in range(rng.randint(2, 5))) for _ in range(3 * train_size)}
    pairs = [(w, w[::-1].upper()) for w in sorted(words)]
    rng.shuffle(pairs)
    write_lexicons(folder, {"train": pairs[dev_size:dev_size + train_size], "dev": pairs[:dev_size]})


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_learns_to_reverse_strings(tmp_path, dtype):
    reversal_data(tmp_path / "data")
    metrics = s2s.main(["--data_dir", str(tmp_path / "data"), "--out_dir", str(tmp_path / "out"), "--cell", "gru",
                        "--hidden_size", "64", "--embedding_size", "16", "--epochs", "6", "--batch_size", "32",
                        "--learning_rate", "0.01", "--dropout", "0", "--label_smoothing", "0", "--beam_size", "3",
                        "--dtype", dtype])
    assert metrics["word_accuracy"] > 0.9
    assert (tmp_path / "out" / "attention-dev.png").stat().st_size > 0
    # Mixed precision computes in bfloat16 but keeps (and saves) float32 weights.
    weights = torch.load(tmp_path / "out" / "best.pt", weights_only=True)["model"]
    assert all(tensor.dtype == torch.float32 for tensor in weights.values())


def test_bfloat16_training_computes_in_bfloat16(tmp_path):
    """The same seed and data give other weights after one epoch in bfloat16 than in float32: autocast is really on."""
    reversal_data(tmp_path / "data", train_size=200, dev_size=20)
    common = ["--data_dir", str(tmp_path / "data"), "--cell", "lstm", "--hidden_size", "16", "--embedding_size", "8",
              "--batch_size", "16", "--epochs", "1", "--heatmaps", "0"]
    weights = {}
    for dtype in ("float32", "bfloat16"):
        s2s.main(common + ["--dtype", dtype, "--out_dir", str(tmp_path / dtype)])
        weights[dtype] = torch.load(tmp_path / dtype / "last.pt", weights_only=True)["model"]
    name = "encoder.rnn.weight_hh_l0"
    assert not torch.equal(weights["float32"][name], weights["bfloat16"][name])


def test_auto_dtype_is_float32_on_a_cpu_and_half_precision_on_a_gpu(monkeypatch):
    assert s2s.pick_device(s2s.Config(device="cpu")) == (torch.device("cpu"), torch.float32)
    assert s2s.pick_device(s2s.Config(device="cpu", dtype="bfloat16"))[1] == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for bf16, dtype in ((True, torch.bfloat16), (False, torch.float16)):  # fp16 (with a GradScaler) on e.g. a T4
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
        assert s2s.pick_device(s2s.Config()) == (torch.device("cuda"), dtype)


def run_options(tmp_path, name, *more):
    return ["--data_dir", str(tmp_path / "data"), "--out_dir", str(tmp_path / name), "--cell", "lstm", "--hidden_size",
            "16", "--embedding_size", "8", "--batch_size", "16", "--dropout", "0.2", "--heatmaps", "0", *more]


def test_resume_continues_exactly(tmp_path):
    reversal_data(tmp_path / "data", train_size=200, dev_size=20)
    common = ["--teacher_forcing", "0.5"]  # scheduled sampling and dropout draw random numbers: they must continue
    s2s.main(run_options(tmp_path, "straight", *common, "--epochs", "2"))
    s2s.main(run_options(tmp_path, "split", *common, "--epochs", "1"))
    s2s.main(run_options(tmp_path, "split", *common, "--epochs", "2", "--resume"))
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    split = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert split["progress"]["epoch"] == straight["progress"]["epoch"] == 2
    for key in ("model", "averaged"):  # the weights and their moving average
        for name, tensor in straight[key].items():
            assert torch.equal(tensor, split[key][name]), (key, name)
    for a, b in zip(straight["optimizer"]["state"].values(), split["optimizer"]["state"].values()):  # Adam's moments
        assert all(torch.equal(a[name], b[name]) for name in a)
    log = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in log] == [1, 2]  # a resumed run appends to the log


def test_ctrl_c_saves_the_last_finished_step_and_resume_goes_on_from_it(tmp_path, monkeypatch):
    reversal_data(tmp_path / "data", train_size=200, dev_size=20)
    s2s.main(run_options(tmp_path, "straight", "--epochs", "2"))
    real_make_batch, calls = s2s.make_batch, []

    def interrupt_the_20th_step(*args, **kwargs):  # Ctrl-C as step 20 reads its batch (call 14 is the dev pass)
        calls.append(1)
        if len(calls) == 21:
            raise KeyboardInterrupt
        return real_make_batch(*args, **kwargs)

    monkeypatch.setattr(s2s, "make_batch", interrupt_the_20th_step)
    with pytest.raises(SystemExit, match="^interrupted$"):
        s2s.main(run_options(tmp_path, "split", "--epochs", "2"))
    interrupted = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["progress"]
    assert (interrupted["epoch"], interrupted["step"], interrupted["step_in_epoch"]) == (1, 19, 6)  # 13 steps/epoch
    monkeypatch.setattr(s2s, "make_batch", real_make_batch)
    s2s.main(run_options(tmp_path, "split", "--epochs", "2", "--resume"))
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    split = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    for key in ("model", "averaged"):
        for name, tensor in straight[key].items():
            assert torch.equal(tensor, split[key][name]), (key, name)


def test_a_resumed_run_keeps_its_data_and_settings(tmp_path, monkeypatch, capsys):
    """A resumed run trains and scores on the rows the run it continues used, with its settings, unless this command
    line gives them again: early stopping compares dev accuracies across the resume."""
    reversal_data(tmp_path / "data", train_size=100, dev_size=10)
    out = tmp_path / "out"
    s2s.main(["--data_dir", str(tmp_path / "data"), "--max_train_rows", "50", "--max_dev_rows", "4", "--out_dir",
              str(out), "--hidden_size", "8", "--embedding_size", "4", "--epochs", "1", "--heatmaps", "0"])
    monkeypatch.chdir(tmp_path)  # no data/dakshina/hi here: only the run's own --data_dir has the lexicons
    capsys.readouterr()
    s2s.main(["--out_dir", str(out), "--resume", "--epochs", "2"])
    assert "50 training, 4 dev rows" in capsys.readouterr().out
    assert len((out / "predictions-dev.tsv").read_text().splitlines()) == 5  # header and the 4 dev rows
    resumed = torch.load(out / "last.pt", weights_only=True)
    assert resumed["progress"]["epoch"] == 2 and resumed["config"]["hidden_size"] == 8
    with pytest.raises(SystemExit, match="trained with --hidden_size 8, not 16"):
        s2s.main(["--out_dir", str(out), "--resume", "--epochs", "3", "--hidden_size", "16"])


def test_checkpoints_keep_the_cuda_generators_when_there_is_a_gpu(tmp_path, monkeypatch):
    """On a GPU, dropout and scheduled sampling draw from the CUDA generators: last.pt saves their states and a
    resume restores them. (Run here with a stand-in for torch.cuda, training on the CPU.)"""
    states, restored = [torch.tensor([7, 8, 9], dtype=torch.uint8)], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    reversal_data(tmp_path / "data", train_size=50, dev_size=5)
    s2s.main(run_options(tmp_path, "out", "--device", "cpu", "--epochs", "1"))
    assert torch.equal(torch.load(tmp_path / "out" / "last.pt", weights_only=True)["cuda_rng"][0], states[0])
    s2s.main(run_options(tmp_path, "out", "--device", "cpu", "--epochs", "2", "--resume"))
    assert len(restored) == 1 and torch.equal(restored[0][0], states[0])


def test_plateau_halves_the_rate_and_patience_stops_the_run(tmp_path, monkeypatch, capsys):
    reversal_data(tmp_path / "data", train_size=64, dev_size=8)
    dev_accuracies = iter([0.1, 0.3, 0.2, 0.3, 0.9])  # better, better, worse, equal (not better), never reached
    real_metrics = s2s.transliteration_metrics

    def scripted_metrics(pairs, outputs):  # each epoch's dev pass gets the next accuracy; the final search the real one
        metrics = real_metrics(pairs, outputs)
        return metrics | {"word_accuracy": next(dev_accuracies, metrics["word_accuracy"])}

    monkeypatch.setattr(s2s, "transliteration_metrics", scripted_metrics)
    s2s.main(run_options(tmp_path, "out", "--epochs", "50", "--patience", "2", "--learning_rate", "0.004",
                         "--lr_decay", "0.25"))
    log = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [record["dev_accuracy"] for record in log] == [0.1, 0.3, 0.2, 0.3]  # two epochs without a better one
    assert [record["lr"] for record in log] == pytest.approx([0.004, 0.004, 0.004, 0.001])  # x0.25 after epoch 3
    assert "early stop: no better dev accuracy in 2 epochs" in capsys.readouterr().out
    best = torch.load(tmp_path / "out" / "best.pt", weights_only=True)["progress"]
    assert best["best_dev_accuracy"] == 0.3 and best["epoch"] == 2  # the first epoch that reached 0.3


def test_native2roman_reads_the_native_column(tmp_path, capsys):
    reversal_data(tmp_path / "data", train_size=64, dev_size=8)  # native: the word reversed in capitals
    s2s.main(run_options(tmp_path, "out", "--epochs", "1", "--direction", "native2roman"))
    vocabularies = torch.load(tmp_path / "out" / "best.pt", weights_only=True)["vocabularies"]
    assert set("".join(vocabularies["source"][len(s2s.SPECIAL_TOKENS):])) <= set("ABCDEF")
    assert set("".join(vocabularies["target"][len(s2s.SPECIAL_TOKENS):])) <= set("abcdef")
    with pytest.raises(SystemExit, match="trained with --direction native2roman, not roman2native"):
        s2s.main(["--translit", "abc", "--checkpoint", str(tmp_path / "out" / "best.pt"), "--direction",
                  "roman2native"])


def test_the_time_budget_counts_the_whole_run(tmp_path, monkeypatch, capsys):
    """--max_minutes stops training early enough that the whole run, the dev passes and the final beam search
    included, ends within it; the last dev pass still scores what was trained. On a clock that moves one second each
    time it is read, 2 minutes are 120 readings, whatever the speed of the machine."""
    reversal_data(tmp_path / "data", train_size=1200, dev_size=100)
    seconds = itertools.count()
    monkeypatch.setattr(s2s, "time", types.SimpleNamespace(time=lambda: next(seconds)))
    metrics = s2s.main(run_options(tmp_path, "out", "--epochs", "100", "--patience", "100", "--max_minutes", "2"))
    assert next(seconds) <= 120 and "time is up after" in capsys.readouterr().out
    log = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert len(log) >= 2 and log[-1]["epoch"] < 100 and metrics["word_accuracy"] >= 0


def test_a_new_run_never_overwrites_a_trained_one(tmp_path):
    reversal_data(tmp_path / "data", train_size=100, dev_size=10)
    common = run_options(tmp_path, "out", "--epochs", "1")
    with pytest.raises(SystemExit, match="no checkpoint .*last.pt"):
        s2s.main(common + ["--resume"])
    s2s.main(common)
    trained = (tmp_path / "out" / "best.pt").read_bytes()
    (tmp_path / "out" / "last.pt").unlink()  # best.pt alone is a trained run too
    with pytest.raises(SystemExit, match=r"already holds a run \(best.pt\); continue it with --resume"):
        s2s.main(common)
    assert (tmp_path / "out" / "best.pt").read_bytes() == trained


def test_translit_reads_capitals_as_the_lower_case_it_was_trained_on(tmp_path, capsys):
    reversal_data(tmp_path / "data", train_size=100, dev_size=10)  # inputs are lower-case a-f
    s2s.main(run_options(tmp_path, "out", "--epochs", "1"))
    checkpoint = str(tmp_path / "out" / "best.pt")
    lower = s2s.main(["--translit", "abc fed", "--checkpoint", checkpoint, "--beam_size", "3"])
    assert s2s.main(["--translit", "ABC Fed", "--checkpoint", checkpoint, "--beam_size", "3"]) == lower
    assert len(lower) == 2 and all(len(options) == 3 for options in lower)
    assert capsys.readouterr().out.splitlines()[-2].startswith("abc: ")


def test_evaluate_scores_and_writes_what_its_own_command_line_says(tmp_path):
    """--evaluate takes the model from the checkpoint, but not the training run's --max_dev_rows or --beam_size; its
    files go beside the checkpoint, named after what was scored, or into --out_dir when one is given."""
    reversal_data(tmp_path / "data", train_size=100, dev_size=10)
    run = tmp_path / "run"
    s2s.main(run_options(tmp_path, "run", "--max_dev_rows", "4", "--beam_size", "2", "--epochs", "1"))
    trained = (run / "predictions-dev.tsv").read_text()
    metrics = s2s.main(["--evaluate", "dev", "--checkpoint", str(run / "best.pt"), "--heatmaps", "1"])
    assert len((run / "predictions-dev.tsv").read_text().splitlines()) == 11 != len(trained.splitlines())
    assert (run / "attention-dev.png").stat().st_size > 0 and "cer" in metrics
    lexicon = tmp_path / "data" / "hi.translit.sampled.dev.tsv"
    s2s.main(["--evaluate", str(lexicon), "--checkpoint", str(run / "best.pt"), "--out_dir", str(tmp_path / "ev"),
              "--max_dev_rows", "4", "--heatmaps", "0"])
    assert len((tmp_path / "ev" / "predictions-hi.translit.sampled.dev.tsv").read_text().splitlines()) == 11


def test_bad_input_gets_one_clear_sentence(tmp_path):
    reversal_data(tmp_path / "data", train_size=100, dev_size=10)
    s2s.main(run_options(tmp_path, "out", "--epochs", "1"))
    checkpoint = str(tmp_path / "out" / "best.pt")
    bad = tmp_path / "bad.tsv"
    for text, line in (("नमस्ते\tnamaste\t3\nएक\n", 2), ("\tnamaste\t1\n", 1), ("native\troman\tcount\n", 1),
                       ("नमस्ते\tnamaste\t3\nएक\tek\tx\n", 2), ("नमस्ते\tnamaste\t3\tx\n", 1)):
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(SystemExit, match=f"line {line} of .*bad.tsv is .*, not native<TAB>romanized"):
            s2s.main(["--evaluate", str(bad), "--checkpoint", checkpoint])
    bad.write_text("\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="has no lexicon lines"):
        s2s.main(["--evaluate", str(bad), "--checkpoint", checkpoint])
    bad.write_bytes("\ufeffनमस्ते\tnamaste\t3\n".encode())  # a byte order mark, as some editors write
    assert s2s.read_lexicon(s2s.Config(), str(bad)) == [("namaste", "नमस्ते")]
    bad.write_bytes(b"\xff\xfe\tx\n")
    with pytest.raises(SystemExit, match="is not UTF-8 text"):
        s2s.main(["--evaluate", str(bad), "--checkpoint", checkpoint])
    for missing in (tmp_path / "nope.tsv", tmp_path):
        with pytest.raises(SystemExit, match="there is no lexicon file"):
            s2s.main(["--evaluate", str(missing), "--checkpoint", checkpoint])
    with pytest.raises(SystemExit, match="has no test split|no lexicon file .*hi.translit.sampled.test.tsv"):
        s2s.main(["--evaluate", "test", "--checkpoint", checkpoint])
    with pytest.raises(SystemExit, match=r"run `python prepare_data.py dakshina --lang ta` first"):
        s2s.main(["--lang", "ta", "--data_dir", str(tmp_path / "nowhere"), "--out_dir", str(tmp_path / "new")])
    with pytest.raises(SystemExit, match="trained with --cell lstm, not gru"):
        s2s.main(["--translit", "abc", "--checkpoint", checkpoint, "--cell", "gru"])
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes((tmp_path / "out" / "best.pt").read_bytes()[:1000])
    for path, message in ((damaged, "could not read checkpoint"), (tmp_path / "out", "could not read checkpoint"),
                          (tmp_path / "none.pt", "there is no checkpoint")):
        with pytest.raises(SystemExit, match=message):
            s2s.main(["--translit", "abc", "--checkpoint", str(path)])
    torch.save({"format": "nanoverse-seq2seq-transformer-v1", "model": {}}, tmp_path / "other.pt")
    with pytest.raises(SystemExit, match="is not a checkpoint of this version of seq2seq_rnn.py"):
        s2s.main(["--translit", "abc", "--checkpoint", str(tmp_path / "other.pt")])
    for flags, named in ((["--learning_rate", "-1"], "--learning_rate must be a number of at least 0"),
                         (["--learning_rate", "nan"], "--learning_rate must be a number of at least 0"),
                         (["--max_train_rows", "-5"], "--max_train_rows must be a number of at least 0"),
                         (["--patience", "0"], "--patience must be at least 1"),
                         (["--beam_size", "0"], "--beam_size must be at least 1"),
                         (["--average_decay", "1.0"], "--average_decay must be below 1"),
                         (["--label_smoothing", "1.5"], "--label_smoothing must be below 1"),
                         (["--attention", "none", "--input_feeding"], "--input_feeding feeds the attentional state"),
                         (["--translit", "  "], 'give either --translit "some words" or --evaluate'),
                         (["--translit", "abc", "--evaluate", "dev"], 'give either --translit'),
                         (["--device", "gpu"], "--device gpu is not one this PyTorch can use here"),
                         (["--max_minute", "3"], "unrecognized arguments: --max_minute 3; did you mean --max_minutes?"),
                         (["--hidden", "32"], "unrecognized arguments: --hidden 32; did you mean --hidden_size?"),
                         (["--precision", "float32"], "did you mean --dtype?")):  # the flag's earlier name
        with pytest.raises(SystemExit, match=named):
            s2s.main(run_options(tmp_path, "fresh", "--epochs", "1", *flags))
    result = subprocess.run([sys.executable, str(ROOT / "seq2seq_rnn.py"), "--translit", "abc", "--checkpoint",
                             checkpoint, "--beam_size", "0"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0  # one sentence


def test_smoke_run_on_hindi_slice(data_dir, tmp_path):
    out, hindi = tmp_path / "out", data_dir / "dakshina" / "hi"
    s2s.main(["--data_dir", str(hindi), "--max_train_rows", "400", "--max_dev_rows", "30", "--epochs", "1",
              "--hidden_size", "32", "--embedding_size", "16", "--beam_size", "3", "--heatmaps", "2",
              "--out_dir", str(out)])
    for name in ("best.pt", "last.pt", "log.jsonl", "predictions-dev.tsv", "attention-dev.png"):
        assert (out / name).stat().st_size > 0, name
    rows = (out / "predictions-dev.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "input\treference\tprediction\tcorrect" and len(rows) == 31
    assert rows[1].split("\t")[1] == "अंकन"  # dev rows keep their order: first line is अंकन ankan
    results = s2s.main(["--translit", "namaste duniya", "--checkpoint", str(out / "best.pt"), "--beam_size", "3"])
    assert len(results) == 2 and all(len(options) == 3 for options in results)
    metrics = s2s.main(["--evaluate", str(hindi / "hi.translit.sampled.dev.tsv"), "--checkpoint",
                        str(out / "best.pt"), "--beam_size", "1", "--out_dir", str(tmp_path / "ev"), "--heatmaps", "1"])
    assert 0.0 <= metrics["word_accuracy"] <= metrics["top_k_accuracy"] and 0.0 <= metrics["cer"]
    assert (tmp_path / "ev" / "attention-hi.translit.sampled.dev.png").stat().st_size > 0
