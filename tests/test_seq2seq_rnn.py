"""Tests for seq2seq_rnn.py: shapes and gradients for every cell, attention and padding, packing, beam search,
learning a toy mapping, metrics, checkpoints and resuming, bad input, and a smoke run on Hindi Dakshina data."""

import io
import itertools
import json
import random
import subprocess
import sys
import tarfile

import pytest
import torch

import seq2seq_rnn as s2s
from conftest import ROOT


def tiny_config(**overrides):
    settings = dict(embedding_size=16, hidden_size=32, dropout=0.0)
    settings.update(overrides)
    return s2s.Config(**settings)


def random_batch(batch_size=5, source_vocab=12, target_vocab=10, lengths=(7, 3, 5, 1, 6), target_length=6):
    """A padded batch with random real tokens (ids >= 4) and <pad> after each word's length."""
    source = torch.randint(4, source_vocab, (batch_size, max(lengths)))
    for row, length in enumerate(lengths):
        source[row, length:] = s2s.PAD
    target_inputs = torch.randint(4, target_vocab, (batch_size, target_length))
    target_inputs[:, 0] = s2s.SOS
    return source, torch.tensor(lengths), target_inputs


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("attention", ["none", "dot", "additive"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_every_cell_runs_forward_and_backward(cell, attention, bidirectional):
    check_forward_and_backward(tiny_config(cell=cell, attention=attention, bidirectional=bidirectional,
                                           encoder_layers=2, decoder_layers=1 if bidirectional else 3, dropout=0.1))


def check_forward_and_backward(config):
    """Logits of the right shape, a finite gradient for every parameter, and scheduled sampling runs too."""
    model = s2s.Seq2Seq(config, 12, 10)
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
    model = s2s.Seq2Seq(tiny_config(cell="lstm", attention="dot", input_feeding=input_feeding), 12, 10).eval()
    source, lengths, target_inputs = random_batch()
    with torch.no_grad():
        forced = model(source, lengths, target_inputs, teacher_forcing=1.0)
        almost = model(source, lengths, target_inputs, teacher_forcing=1 - 1e-12)  # torch.rand stays below it
        free = model(source, lengths, target_inputs, teacher_forcing=0.0)
        greedy, _, _ = s2s.greedy_decode(model, source, lengths, max_length=target_inputs.size(1))
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


def test_input_feeding_reads_the_previous_attentional_state():
    """Changing only the attentional state fed in at the start changes the first step's output; without input
    feeding the decoder has no such input."""
    torch.manual_seed(0)
    model = s2s.Seq2Seq(tiny_config(cell="lstm", attention="dot", input_feeding=True), 12, 10).eval()
    source, lengths, target_inputs = random_batch()
    memory, keys, mask, (rnn_state, feed) = model.encode(source, lengths)
    assert feed.shape == (1, 5, 32) and not feed.any()  # zeros before the first step
    first, (_, after), _ = model.decoder(target_inputs[:, :1], (rnn_state, feed), memory, keys, mask)
    other, _, _ = model.decoder(target_inputs[:, :1], (rnn_state, torch.ones_like(feed)), memory, keys, mask)
    assert not torch.allclose(first, other)
    assert after.shape == feed.shape and after.abs().max() <= 1  # a tanh output, the next step's input
    assert after.abs().sum() > 0  # the state carried forward is the step's own, so the next step reads it
    fed, _, _ = model.decoder(target_inputs[:, 1:2], (rnn_state, after), memory, keys, mask)
    unfed, _, _ = model.decoder(target_inputs[:, 1:2], (rnn_state, torch.zeros_like(after)), memory, keys, mask)
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
    expected = torch.tanh(bridge.hidden_projection(torch.cat([hidden[2], hidden[3]], dim=-1)))
    torch.testing.assert_close(new_hidden[1], expected)


@pytest.mark.parametrize("kind", ["dot", "additive"])
def test_attention_weights_sum_to_one_and_ignore_padding(kind):
    attention = s2s.Attention(kind, 32)
    queries, memory = torch.randn(3, 4, 32), torch.randn(3, 6, 32)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 2, 4])[:, None]
    context, weights = attention(queries, attention.keys(memory), memory, mask)
    assert context.shape == (3, 4, 32) and weights.shape == (3, 4, 6)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4))
    assert (weights.masked_select(~mask[:, None, :].expand_as(weights)) == 0).all()
    # what is stored at padded positions cannot change the context
    changed = memory.clone()
    changed[~mask] = 100.0
    torch.testing.assert_close(attention(queries, attention.keys(changed), changed, mask)[0], context)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_model_output_does_not_depend_on_padding(cell):
    model = s2s.Seq2Seq(tiny_config(cell=cell, attention="additive"), 12, 10).eval()
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
    model = s2s.Seq2Seq(tiny_config(cell="lstm", attention="dot", decoder_layers=2, input_feeding=input_feeding),
                        12, 10).eval()
    source, lengths, target_inputs = random_batch()
    memory, keys, mask, state = model.encode(source, lengths)
    whole, _, _ = model.decoder(target_inputs, state, memory, keys, mask)
    steps = []
    for t in range(target_inputs.size(1)):
        logits, state, _ = model.decoder(target_inputs[:, t:t + 1], state, memory, keys, mask)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention, input_feeding", [("none", False), ("dot", False), ("dot", True)])
def test_beam_search_with_beam_one_equals_greedy(attention, input_feeding):
    model = s2s.Seq2Seq(tiny_config(cell="gru", attention=attention, input_feeding=input_feeding), 12, 10).eval()
    source, lengths, _ = random_batch()
    for _ in range(100):  # make <eos> likelier until words end at different steps: finished rows must stay finished
        greedy, _, greedy_log_probs = s2s.greedy_decode(model, source, lengths, max_length=12)
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


@pytest.mark.parametrize("input_feeding", [False, True])
def test_the_heatmaps_attention_of_a_given_output_is_what_decoding_it_attended(input_feeding):
    """attention_of (what the heatmaps draw) teacher-forces a given output; given the greedy output it must give the
    very weights greedy decoding computed while writing it."""
    torch.manual_seed(3)
    model = never_special(s2s.Seq2Seq(tiny_config(cell="lstm", attention="dot", input_feeding=input_feeding), 12, 10))
    vocabularies, words = tiny_vocabularies(), ["abc", "hgfe", "d"]
    source, lengths, _, _ = s2s.make_batch([(w, "") for w in words], {c: i for i, c in
                                           enumerate(vocabularies["source"])}, {}, "cpu")
    ids, greedy_weights, _ = s2s.greedy_decode(model, source, lengths, max_length=20)
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
    model = s2s.Seq2Seq(tiny_config(cell="gru", attention="dot"), 12, 6).eval()
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
    model = s2s.Seq2Seq(config, 12, 10).eval()
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


def never_special(model):
    """An untrained model that never writes <pad>, <sos> or <unk> and ends words early, so every output it decodes
    is a real word with its <eos>, as a trained model's are."""
    with torch.no_grad():
        model.decoder.output.bias[[s2s.PAD, s2s.SOS, s2s.UNK]] = -1e4
        model.decoder.output.bias[s2s.EOS] += 2.0
    return model.eval()


def tiny_vocabularies(source_size=12, target_size=10):
    """Vocabularies whose ids line up with random_batch(): specials, then one letter per id."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    return {"source": s2s.SPECIAL_TOKENS + list(letters[:source_size - 4]),
            "target": s2s.SPECIAL_TOKENS + list(letters.upper()[:target_size - 4])}


@pytest.mark.parametrize("input_feeding", [False, True])
def test_rescoring_reproduces_the_beam_scores_and_a_single_model_ensemble(input_feeding):
    torch.manual_seed(0)
    model = never_special(s2s.Seq2Seq(tiny_config(cell="gru", attention="dot", input_feeding=input_feeding), 12, 10))
    vocabularies, words = tiny_vocabularies(), ["abc", "hgfe", "d", "bbbbbb", "ca"]
    beam = s2s.transliterate(model, words, vocabularies, beam_size=3, max_length=20)
    pairs = [(word, text) for word, options in zip(words, beam) for text, _ in options]
    log_probs, lengths = s2s.output_log_probs(model, pairs, vocabularies)
    # the teacher-forced score of each beam output is the log-probability the beam search accumulated for it
    torch.testing.assert_close(torch.tensor(log_probs), torch.tensor([p for options in beam for _, p in options]))
    assert lengths == [len(text) + 1 for _, text in pairs]  # every character and <eos>
    alone = s2s.transliterate(s2s.Ensemble([model], [vocabularies]), words, vocabularies, beam_size=3, max_length=20)
    assert [[t for t, _ in options] for options in alone] == [[t for t, _ in options] for options in beam]


def test_ensemble_ranks_the_proposals_of_all_models_by_their_mean_score():
    """Each model reads and scores with its own vocabulary: here the second numbers its characters the other way."""
    torch.manual_seed(1)
    first = never_special(s2s.Seq2Seq(tiny_config(cell="gru", attention="dot"), 12, 10))
    second = never_special(s2s.Seq2Seq(tiny_config(cell="lstm", attention="additive", reverse_output=True), 12, 10))
    first_vocabularies, words = tiny_vocabularies(), ["abc", "hgfe", "d", "abc"]
    second_vocabularies = {kind: s2s.SPECIAL_TOKENS + characters[len(s2s.SPECIAL_TOKENS):][::-1]
                           for kind, characters in first_vocabularies.items()}
    members = [(first, first_vocabularies), (second, second_vocabularies)]
    ensemble = s2s.Ensemble([first, second], [first_vocabularies, second_vocabularies])
    result = s2s.transliterate(ensemble, words, None, beam_size=2, max_length=20, length_penalty=0.5)
    assert result[0] == result[3] and all(len(options) == 2 for options in result)
    for word, options in zip(words, result):
        proposals = {text for model, vocabularies in members
                     for text, _ in s2s.transliterate(model, [word], vocabularies, 2, 20, 0.5)[0]}
        pairs = [(word, text) for text in sorted(proposals)]
        scores = [s2s.output_log_probs(model, pairs, vocabularies) for model, vocabularies in members]
        mean = {text: sum(lp[i] / n[i] ** 0.5 for lp, n in scores) / 2 for i, (_, text) in enumerate(pairs)}
        assert [text for text, _ in options] == sorted(mean, key=mean.get, reverse=True)[:2]


def test_a_reversed_model_writes_backwards_and_is_read_forwards():
    torch.manual_seed(2)
    forwards = never_special(s2s.Seq2Seq(tiny_config(cell="lstm"), 12, 10))
    backwards = s2s.Seq2Seq(tiny_config(cell="lstm", reverse_output=True), 12, 10).eval()
    backwards.load_state_dict(forwards.state_dict())  # same weights: only the order of the output differs
    vocabularies, words = tiny_vocabularies(), ["abc", "hgfe", "d"]
    ahead = s2s.transliterate(forwards, words, vocabularies, beam_size=3, max_length=20)
    behind = s2s.transliterate(backwards, words, vocabularies, beam_size=3, max_length=20)
    assert [[t[::-1] for t, _ in options] for options in ahead] == [[t for t, _ in options] for options in behind]
    pairs = [("abc", "ABCD"), ("d", "E")]
    reversed_pairs = [(w, t[::-1]) for w, t in pairs]
    assert s2s.output_log_probs(backwards, pairs, vocabularies) == s2s.output_log_probs(forwards, reversed_pairs,
                                                                                        vocabularies)


def test_linear_schedule_reaches_zero_at_the_end_of_the_budget():
    by_epochs = tiny_config(lr_schedule="linear", learning_rate=0.01, epochs=4)
    assert s2s.linear_learning_rate(by_epochs, {"epoch": 0, "train_seconds": 0.0}, 0.0, 0.0) == 0.01
    assert s2s.linear_learning_rate(by_epochs, {"epoch": 2, "train_seconds": 99.0}, 5.0, 0.5) == pytest.approx(0.00375)
    by_clock = tiny_config(lr_schedule="linear", learning_rate=0.01, max_minutes=2.0)  # 120 s of training
    assert s2s.linear_learning_rate(by_clock, {"epoch": 3, "train_seconds": 60.0}, 30.0, 0.1) == pytest.approx(0.0025)
    assert s2s.linear_learning_rate(by_clock, {"epoch": 9, "train_seconds": 119.0}, 5.0, 0.9) == 0.0
    epochs_first = tiny_config(lr_schedule="linear", learning_rate=0.01, epochs=4, max_minutes=100.0)
    progress = {"epoch": 2, "train_seconds": 60.0}  # 62.5% of the epochs, 1% of the clock: the epochs decide
    assert s2s.linear_learning_rate(epochs_first, progress, 5.0, 0.5) == pytest.approx(0.00375)


def test_weight_average_follows_its_formula():
    model = s2s.Seq2Seq(tiny_config(), 8, 8)
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


def write_lexicons(folder, pairs_by_split, lang="hi"):
    """Writes native<TAB>roman<TAB>count files in the mirror's layout: folder/<lang>/<lang>.translit.sampled.*.tsv."""
    (folder / lang).mkdir(parents=True, exist_ok=True)
    for split, pairs in pairs_by_split.items():
        lines = [f"{native}\t{roman}\t1" for roman, native in pairs]
        (folder / lang / f"{lang}.translit.sampled.{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def reversal_data(folder, train_size=1200, dev_size=100):
    rng = random.Random(0)
    words = {"".join(rng.choice("abcdef") for _ in range(rng.randint(2, 5))) for _ in range(3 * train_size)}
    pairs = [(w, w[::-1].upper()) for w in sorted(words)]
    rng.shuffle(pairs)
    write_lexicons(folder, {"train": pairs[dev_size:dev_size + train_size], "dev": pairs[:dev_size]})


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_learns_to_reverse_strings(tmp_path, precision):
    reversal_data(tmp_path / "data")
    metrics = s2s.main(["--data_dir", str(tmp_path / "data"), "--out_dir", str(tmp_path / "out"), "--cell", "gru",
                        "--hidden_size", "64", "--embedding_size", "16", "--epochs", "6", "--batch_size", "32",
                        "--learning_rate", "0.01", "--dropout", "0", "--label_smoothing", "0", "--beam_size", "3",
                        "--precision", precision])
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
    for precision in ("float32", "bfloat16"):
        s2s.main(common + ["--precision", precision, "--out_dir", str(tmp_path / precision)])
        weights[precision] = torch.load(tmp_path / precision / "last.pt", weights_only=True)["model"]
    name = "encoder.rnn.weight_hh_l0"
    assert not torch.equal(weights["float32"][name], weights["bfloat16"][name])


def test_auto_precision_is_bfloat16_only_on_a_cpu_that_computes_it(monkeypatch):
    assert s2s.training_dtype("float32", "cpu") == torch.float32
    assert s2s.training_dtype("bfloat16", "cpu") == torch.bfloat16
    for native in (True, False):
        monkeypatch.setattr(s2s, "cpu_computes_bfloat16", lambda: native)
        assert s2s.training_dtype("auto", "cpu") == (torch.bfloat16 if native else torch.float32)
        assert s2s.training_dtype("auto", "cuda") == s2s.training_dtype("auto", "mps") == torch.float32


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


def test_unseen_characters_become_unk():
    stoi = {c: i for i, c in enumerate(s2s.build_vocabulary(["ab"]))}
    assert s2s.encode_word("ab!", stoi) == [stoi["a"], stoi["b"], s2s.UNK]
    model = s2s.Seq2Seq(tiny_config(), len(stoi), 8)
    vocabularies = {"source": list(stoi), "target": s2s.build_vocabulary(["wxyz"])}
    assert len(s2s.transliterate(model, ["a!b", "zz"], vocabularies, beam_size=2, max_length=5)[0]) == 2


def test_resume_continues_exactly(tmp_path):
    reversal_data(tmp_path / "data", train_size=200, dev_size=20)
    common = ["--data_dir", str(tmp_path / "data"), "--cell", "lstm", "--hidden_size", "16", "--embedding_size",
              "8", "--batch_size", "16", "--dropout", "0.2", "--teacher_forcing", "0.5", "--heatmaps", "0"]
    s2s.main(common + ["--epochs", "2", "--out_dir", str(tmp_path / "straight")])
    s2s.main(common + ["--epochs", "1", "--out_dir", str(tmp_path / "split")])
    s2s.main(common + ["--epochs", "2", "--out_dir", str(tmp_path / "split"), "--resume"])
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    split = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert split["progress"]["epoch"] == straight["progress"]["epoch"] == 2
    for key in ("model", "averaged_model"):  # the weights and their moving average
        for name, tensor in straight[key].items():
            assert torch.equal(tensor, split[key][name]), (key, name)


def test_resume_reads_the_data_of_the_run_it_continues(tmp_path, monkeypatch, capsys):
    """Without --data_dir, --max_train_rows and --max_dev_rows, a resumed run trains and scores on the rows the run it
    continues used, not on this command line's defaults (early stopping compares dev accuracies across the resume)."""
    reversal_data(tmp_path / "data", train_size=100, dev_size=10)
    write_lexicons(tmp_path / "elsewhere" / "dakshina", {"train": [("xyz", "Q")], "dev": [("xyz", "Q")]})
    monkeypatch.setenv("NANOVERSE_DATA", str(tmp_path / "elsewhere"))  # where a run without --data_dir looks
    out = tmp_path / "out"
    s2s.main(["--data_dir", str(tmp_path / "data"), "--max_train_rows", "50", "--max_dev_rows", "4", "--out_dir",
              str(out), "--hidden_size", "8", "--embedding_size", "4", "--epochs", "1", "--heatmaps", "0"])
    capsys.readouterr()
    s2s.main(["--out_dir", str(out), "--resume", "--epochs", "2"])
    assert "50 training and 4 dev rows" in capsys.readouterr().out
    assert len((out / "predictions-dev.tsv").read_text().splitlines()) == 5  # header and the 4 dev rows
    resumed = torch.load(out / "last.pt", weights_only=True)
    assert resumed["progress"]["epoch"] == 2 and resumed["config"]["max_dev_rows"] == 4


def test_checkpoints_keep_the_cuda_generators_when_there_is_a_gpu(tmp_path, monkeypatch):
    """On a GPU, dropout and scheduled sampling draw from the CUDA generators: last.pt saves their states and a
    resume restores them. (Run here with a stand-in for torch.cuda, training on the CPU.)"""
    states, restored = [torch.tensor([7, 8, 9], dtype=torch.uint8)], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    reversal_data(tmp_path / "data", train_size=50, dev_size=5)
    common = ["--data_dir", str(tmp_path / "data"), "--out_dir", str(tmp_path / "out"), "--device", "cpu",
              "--hidden_size", "8", "--embedding_size", "4", "--heatmaps", "0"]
    s2s.main(common + ["--epochs", "1"])
    assert torch.equal(torch.load(tmp_path / "out" / "last.pt", weights_only=True)["cuda_rng"][0], states[0])
    s2s.main(common + ["--epochs", "2", "--resume"])
    assert len(restored) == 1 and torch.equal(restored[0][0], states[0])


def test_ctrl_c_before_the_first_epoch_ends_says_there_is_no_best_checkpoint(tmp_path, monkeypatch, capsys):
    reversal_data(tmp_path / "data", train_size=50, dev_size=5)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(s2s, "sequence_loss", interrupt)
    assert s2s.main(["--data_dir", str(tmp_path / "data"), "--out_dir", str(tmp_path / "out"), "--hidden_size", "8",
                     "--embedding_size", "4", "--epochs", "1", "--heatmaps", "0"]) is None
    assert "interrupted before the first epoch finished: there is no best.pt" in capsys.readouterr().out


def test_a_new_run_never_overwrites_a_trained_one(tmp_path):
    reversal_data(tmp_path / "data", train_size=100, dev_size=10)
    common = ["--data_dir", str(tmp_path / "data"), "--out_dir", str(tmp_path / "out"), "--hidden_size", "8",
              "--embedding_size", "4", "--heatmaps", "0"]
    with pytest.raises(SystemExit, match="nothing to resume"):
        s2s.main(common + ["--epochs", "1", "--resume"])
    s2s.main(common + ["--epochs", "1"])
    trained = (tmp_path / "out" / "best.pt").read_bytes()
    with pytest.raises(SystemExit, match="already holds a run .* --resume"):
        s2s.main(common + ["--epochs", "1"])
    assert (tmp_path / "out" / "best.pt").read_bytes() == trained
    s2s.main(common + ["--epochs", "2", "--resume"])
    log = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in log] == [1, 2]  # one run, one log


def test_translit_reads_capitals_as_the_lower_case_it_was_trained_on(tmp_path, capsys):
    reversal_data(tmp_path / "data", train_size=100, dev_size=10)  # inputs are lower-case a-f
    out = tmp_path / "out"
    s2s.main(["--data_dir", str(tmp_path / "data"), "--out_dir", str(out), "--hidden_size", "8", "--embedding_size",
              "4", "--epochs", "1", "--heatmaps", "0"])
    lower = s2s.main(["--translit", "abc fed", "--checkpoint", f"{out / 'best.pt'}, {out / 'last.pt'}"])
    capsys.readouterr()
    assert s2s.main(["--translit", "ABC Fed", "--checkpoint", str(out / "best.pt")]) == \
        s2s.main(["--translit", "abc fed", "--checkpoint", str(out / "best.pt")])
    assert "never saw" not in capsys.readouterr().out
    s2s.main(["--translit", "ab9", "--checkpoint", str(out / "best.pt")])
    assert "never saw '9'" in capsys.readouterr().out
    assert len(lower) == 2
    metrics = s2s.main(["--evaluate", "dev", "--data_dir", str(tmp_path / "data"), "--checkpoint",
                        str(out / "best.pt"), "--out_dir", str(tmp_path / "ev"), "--heatmaps", "0"])
    assert len((tmp_path / "ev" / "predictions-dev.tsv").read_text().splitlines()) == 11 and "cer" in metrics
    s2s.main(["--evaluate", "dev", "--max_dev_rows", "4", "--data_dir", str(tmp_path / "data"), "--checkpoint",
              str(out / "best.pt"), "--out_dir", str(tmp_path / "ev"), "--heatmaps", "0"])
    assert len((tmp_path / "ev" / "predictions-dev.tsv").read_text().splitlines()) == 5


def test_evaluate_scores_and_writes_what_its_own_command_line_says(tmp_path, monkeypatch, capsys):
    """--evaluate takes the model from the checkpoint, but not the training run's --max_dev_rows, --beam_size or
    --out_dir: the whole dev split is scored with the default beam, and without --out_dir the results go to the
    default folder, never over the training run's files."""
    reversal_data(tmp_path / "data", train_size=100, dev_size=10)
    run = tmp_path / "run"
    s2s.main(["--data_dir", str(tmp_path / "data"), "--out_dir", str(run), "--max_dev_rows", "4", "--beam_size", "2",
              "--hidden_size", "8", "--embedding_size", "4", "--epochs", "1", "--heatmaps", "0"])
    trained = {path.name: path.read_bytes() for path in run.iterdir()}
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    s2s.main(["--evaluate", "dev", "--checkpoint", str(run / "best.pt"), "--heatmaps", "0"])
    assert "dev (beam 5, 10 rows" in capsys.readouterr().out
    rows = (tmp_path / "elsewhere" / "out-seq2seq" / "predictions-dev.tsv").read_text().splitlines()
    assert len(rows) == 11  # header and all 10 dev rows
    assert {path.name: path.read_bytes() for path in run.iterdir()} == trained


def test_bad_input_gets_one_clear_sentence(tmp_path):
    reversal_data(tmp_path / "data", train_size=100, dev_size=10)
    out = tmp_path / "out"
    s2s.main(["--data_dir", str(tmp_path / "data"), "--out_dir", str(out), "--hidden_size", "8", "--embedding_size",
              "4", "--epochs", "1", "--heatmaps", "0"])
    checkpoint = str(out / "best.pt")
    bad = tmp_path / "bad.tsv"
    bad.write_text("नमस्ते\tnamaste\t3\nएक\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="line 2 of .*bad.tsv has 1 tab-separated"):
        s2s.main(["--evaluate", str(bad), "--checkpoint", checkpoint])
    bad.write_text("\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="has no lexicon lines"):
        s2s.main(["--evaluate", str(bad), "--checkpoint", checkpoint])
    with pytest.raises(SystemExit, match="--average_decay must be at least 0"):
        s2s.main(["--average_decay", "1.0", "--epochs", "1"])
    with pytest.raises(SystemExit, match="--max_output_length must be at least 1"):
        s2s.main(["--translit", "abc", "--checkpoint", checkpoint, "--max_output_length", "0"])
    with pytest.raises(SystemExit, match="--beam_size must be at least 1"):
        s2s.main(["--translit", "abc", "--checkpoint", checkpoint, "--beam_size", "0"])
    with pytest.raises(SystemExit, match="trained with --no-input_feeding, not --input_feeding"):
        s2s.main(["--translit", "abc", "--checkpoint", checkpoint, "--input_feeding"])
    with pytest.raises(SystemExit, match="trained with --cell lstm, not --cell gru"):
        s2s.main(["--translit", "abc", "--checkpoint", checkpoint, "--cell", "gru"])
    with pytest.raises(SystemExit, match="--input_feeding feeds the attentional state back, so it needs"):
        s2s.main(["--attention", "none", "--input_feeding", "--epochs", "1"])
    older = torch.load(checkpoint, weights_only=True)  # saved before --input_feeding and --reverse_output existed
    del older["config"]["input_feeding"], older["config"]["reverse_output"]
    torch.save(older, tmp_path / "older.pt")
    assert len(s2s.main(["--translit", "abc", "--checkpoint", str(tmp_path / "older.pt")])) == 1
    write_lexicons(tmp_path / "other", {"train": [("xyz", "q")], "dev": [("xyz", "q")]})
    with pytest.raises(SystemExit, match="trained on other characters .*--max_train_rows 0"):
        s2s.main(["--data_dir", str(tmp_path / "other"), "--out_dir", str(out), "--resume"])
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes((out / "best.pt").read_bytes()[:1000])
    with pytest.raises(SystemExit, match="could not read checkpoint"):
        s2s.main(["--translit", "abc", "--checkpoint", str(damaged)])
    s2s.main(["--data_dir", str(tmp_path / "other"), "--out_dir", str(tmp_path / "out_other"), "--hidden_size", "8",
              "--embedding_size", "4", "--epochs", "1", "--heatmaps", "0"])
    # other characters are fine in an ensemble (each model keeps its own), another direction is not
    assert len(s2s.main(["--translit", "abc", "--checkpoint", f"{checkpoint},{tmp_path / 'out_other' / 'best.pt'}"]))
    s2s.main(["--data_dir", str(tmp_path / "other"), "--out_dir", str(tmp_path / "out_back"), "--hidden_size", "8",
              "--embedding_size", "4", "--epochs", "1", "--heatmaps", "0", "--direction", "native2roman"])
    with pytest.raises(SystemExit, match="transliterates --lang hi native2roman, but .* roman2native; an ensemble"):
        s2s.main(["--translit", "abc", "--checkpoint", f"{checkpoint},{tmp_path / 'out_back' / 'best.pt'}"])
    torch.save({"format": "nanoverse-gpt-v1", "model": {}}, tmp_path / "gpt.pt")
    with pytest.raises(SystemExit, match="is not a checkpoint that seq2seq_rnn.py wrote; pass the best.pt"):
        s2s.main(["--translit", "abc", "--checkpoint", str(tmp_path / "gpt.pt")])
    with pytest.raises(SystemExit, match='quote them: --translit "abc fed"'):
        s2s.main(["--translit", "abc", "fed", "--checkpoint", checkpoint])
    with pytest.raises(SystemExit, match="found no hi.translit.sampled.train.tsv"):
        s2s.main(["--data_dir", str(tmp_path), "--out_dir", str(tmp_path / "new")])
    bad.write_text("\tnamaste\t1\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="line 1 of .*bad.tsv has an empty native column"):
        s2s.main(["--evaluate", str(bad), "--checkpoint", checkpoint])
    bad.write_text("native\troman\tcount\nनमस्ते\tnamaste\t3\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="line 1 of .*'count' as its count, not a whole number; a lexicon has no "
                                         "header line"):
        s2s.main(["--evaluate", str(bad), "--checkpoint", checkpoint])
    bad.write_text("नमस्ते\tnamaste\t3\nएक\tek\tx\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="line 2 of .*'x' as its count, not a whole number; fix or delete it"):
        s2s.main(["--evaluate", str(bad), "--checkpoint", checkpoint])
    bad.write_text("नमस्ते\tnamaste\t3\tx\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="has 4 tab-separated column.*'x'"):
        s2s.main(["--evaluate", str(bad), "--checkpoint", checkpoint])
    bad.write_bytes("\ufeffनमस्ते\tnamaste\t3\n".encode())  # a byte order mark, as some editors write
    assert s2s.read_lexicon(bad, "roman2native") == [("namaste", "नमस्ते")]
    with pytest.raises(SystemExit, match="has an empty name"):
        s2s.main(["--translit", "abc", "--checkpoint", f"{checkpoint},,{checkpoint}"])
    with pytest.raises(SystemExit):  # a shortened flag is not guessed (it would be --hidden_size)
        s2s.main(["--hidden", "32", "--epochs", "1"])
    for missing in (tmp_path / "nope.tsv", tmp_path):
        with pytest.raises(SystemExit, match="there is no lexicon file at"):
            s2s.main(["--evaluate", str(missing), "--checkpoint", checkpoint])
    with pytest.raises(SystemExit, match="is a folder; pass the checkpoint file inside it"):
        s2s.main(["--translit", "abc", "--checkpoint", str(out)])
    with pytest.raises(SystemExit, match="--translit needs at least one word"):
        s2s.main(["--translit", "  ", "--checkpoint", checkpoint])
    with pytest.raises(SystemExit, match="not both"):
        s2s.main(["--translit", "abc", "--evaluate", str(bad), "--checkpoint", checkpoint])
    for flags, named in ((["--threads", "-1"], "--threads cannot be negative"),
                         (["--learning_rate", "-1"], "--learning_rate cannot be negative"),
                         (["--max_train_rows", "-5"], "--max_train_rows cannot be negative"),
                         (["--patience", "0"], "--patience must be at least 1"),
                         (["--learning_rate", "nan"], "--learning_rate must be a number"),
                         (["--label_smoothing", "1.5"], "--label_smoothing must be at least 0 and below 1"),
                         (["--device", "gpu"], "--device 'gpu' is not a device")):
        with pytest.raises(SystemExit, match=named):
            s2s.main(["--data_dir", str(tmp_path / "data"), "--out_dir", str(tmp_path / "fresh"), "--epochs", "1",
                      *flags])
    result = subprocess.run([sys.executable, str(ROOT / "seq2seq_rnn.py"), "--translit", "abc", "--checkpoint",
                             checkpoint, "--beam_size", "0"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0  # one sentence


def test_the_lexicons_of_a_good_archive_are_extracted_and_checked(tmp_path, data_dir):
    archive = tmp_path / "cache" / "dakshina_dataset_v1.0.tar"
    archive.parent.mkdir()
    lexicons = {f"hi.translit.sampled.{split}.tsv": (data_dir / "dakshina" / "hi" / f"hi.translit.sampled.{split}.tsv")
                .read_bytes() for split in ("train", "dev")}
    lexicons["hi.translit.sampled.test.tsv"] = "नमस्ते\tnamaste\t1\n".encode()
    for damaged in (False, True):
        with tarfile.open(archive, "w") as tar:
            for name, data in lexicons.items():
                data = data + b"x" if damaged and "dev" in name else data
                info = tarfile.TarInfo(f"dakshina_dataset_v1.0/hi/lexicons/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        if damaged:
            with pytest.raises(SystemExit, match="hi.translit.sampled.dev.tsv in .* has the wrong sha256"):
                s2s.download_dakshina("hi", tmp_path / "cache")
        else:
            s2s.download_dakshina("hi", tmp_path / "cache")
            assert {name: (tmp_path / "cache" / "hi" / name).read_bytes() for name in lexicons} == lexicons


def test_a_cut_off_download_or_a_damaged_archive_is_named_and_not_kept(tmp_path, monkeypatch):
    class CutOff(io.BytesIO):  # the server promised 5,000 bytes and closed the connection after 1,000
        headers = {"Content-Length": "5000"}

    monkeypatch.setattr(s2s.urllib.request, "urlopen", lambda url, timeout: CutOff(b"x" * 1000))
    cache = tmp_path / "cache"
    with pytest.raises(SystemExit, match="got 1,000 of 5,000 bytes.*run again"):
        s2s.download_dakshina("hi", cache)
    assert list(cache.iterdir()) == []  # neither the fragment nor a file under the archive's name is kept
    archive = cache / "dakshina_dataset_v1.0.tar"
    archive.write_bytes(random.Random(0).randbytes(5000))
    with pytest.raises(SystemExit, match=r"could not read .*\.tar \(ReadError\), so it is damaged or cut short"):
        s2s.download_dakshina("hi", cache)
    with tarfile.open(archive, "w") as tar:  # a real tar, but without this language's lexicons
        tar.addfile(tarfile.TarInfo("dakshina_dataset_v1.0/README.md"), io.BytesIO())
    with pytest.raises(SystemExit, match="has no hi lexicons, so it is not the Dakshina archive; delete"):
        s2s.download_dakshina("hi", cache)


def test_a_partial_data_folder_names_the_missing_split_instead_of_downloading(tmp_path, monkeypatch):
    write_lexicons(tmp_path / "mirror" / "dakshina", {"train": [("ab", "BA")], "dev": [("ab", "BA")]})
    monkeypatch.setenv("NANOVERSE_DATA", str(tmp_path / "mirror"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(s2s, "download_dakshina", lambda *arguments: pytest.fail("must not download"))
    mirror = tmp_path / "mirror" / "dakshina" / "hi"
    assert s2s.lexicon_path(s2s.Config(), "dev") == mirror / "hi.translit.sampled.dev.tsv"
    with pytest.raises(SystemExit, match="has the hi training lexicon but no hi.translit.sampled.test.tsv"):
        s2s.lexicon_path(s2s.Config(), "test")


def test_smoke_run_on_hindi_slice(data_dir, tmp_path):
    out = tmp_path / "out"
    s2s.main(["--data_dir", str(data_dir / "dakshina"), "--max_train_rows", "400", "--max_dev_rows", "30",
              "--epochs", "1", "--hidden_size", "32", "--embedding_size", "16", "--beam_size", "3", "--heatmaps", "2",
              "--out_dir", str(out)])
    for name in ("best.pt", "last.pt", "log.jsonl", "predictions-dev.tsv", "attention-dev.png"):
        assert (out / name).stat().st_size > 0, name
    rows = (out / "predictions-dev.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "input\treference\tprediction\tcorrect" and len(rows) == 31
    assert rows[1].split("\t")[1] == "अंकन"  # dev rows keep their order: first line is अंकन ankan
    results = s2s.main(["--translit", "namaste duniya", "--checkpoint", str(out / "best.pt"), "--beam_size", "3"])
    assert len(results) == 2 and all(len(options) == 3 for options in results)
    s2s.main(["--data_dir", str(data_dir / "dakshina"), "--max_train_rows", "400", "--max_dev_rows", "30",
              "--epochs", "1", "--hidden_size", "16", "--embedding_size", "8", "--seed", "2", "--lr_schedule", "linear",
              "--heatmaps", "0", "--out_dir", str(tmp_path / "second")])
    ensemble = s2s.main(["--evaluate", str(data_dir / "dakshina" / "hi" / "hi.translit.sampled.dev.tsv"),
                         "--checkpoint", f"{out / 'best.pt'},{tmp_path / 'second' / 'best.pt'}", "--beam_size", "2",
                         "--out_dir", str(tmp_path / "ensemble"), "--heatmaps", "1"])
    assert 0.0 <= ensemble["word_accuracy"] <= ensemble["top_k_accuracy"]
    assert (tmp_path / "ensemble" / "attention-hi.translit.sampled.dev.png").stat().st_size > 0
    metrics = s2s.main(["--evaluate", str(data_dir / "dakshina" / "hi" / "hi.translit.sampled.dev.tsv"),
                        "--checkpoint", str(out / "best.pt"), "--beam_size", "1", "--out_dir", str(tmp_path / "ev"),
                        "--heatmaps", "0"])
    assert 0.0 <= metrics["cer"] and (tmp_path / "ev" / "predictions-hi.translit.sampled.dev.tsv").exists()
