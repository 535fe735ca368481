"""Tests for seq2seq_transformer.py: its layers equal PyTorch's, causality, padding, attention, the cache, beam search,
learning a toy mapping, the pieces it shares with seq2seq_rnn.py, bad input, and a smoke run on Hindi Dakshina data."""

import ast
import dataclasses
import difflib
import math
import random

import pytest
import torch
import torch.nn as nn

import seq2seq_rnn
import seq2seq_transformer as st
from conftest import ROOT


def tiny_config(**overrides):
    return st.Config(**{**dict(d_model=32, n_head=4, d_ff=64, encoder_layers=2, decoder_layers=2, dropout=0.0),
                        **overrides})


def tiny_vocabularies(source_size=12, target_size=10):
    letters = "abcdefghijklmnopqrstuvwxyz"
    return {"source": st.SPECIAL_TOKENS + list(letters[:source_size - 4]),
            "target": st.SPECIAL_TOKENS + list(letters.upper()[:target_size - 4])}


def tiny_model(**overrides):
    return st.Seq2Seq(tiny_config(**overrides), tiny_vocabularies()).eval()


def random_batch(lengths=(7, 3, 5, 1, 6), target_length=6):
    source = torch.randint(4, 12, (len(lengths), max(lengths)))
    for row, length in enumerate(lengths):
        source[row, length:] = st.PAD
    target_inputs = torch.randint(4, 10, (len(lengths), target_length))
    target_inputs[:, 0] = st.SOS
    return source, torch.tensor(lengths), target_inputs


def copy_attention(ours, theirs):
    """Our separate query and (key, value) projections are slices of PyTorch's packed in_proj."""
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.query.weight, ours.key_value.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.query.bias, ours.key_value.bias]))
        theirs.out_proj.load_state_dict(ours.out.state_dict())


def copy_feed_forward_and_norms(ours, theirs):
    theirs.linear1.load_state_dict(ours.feed_forward[0].state_dict())
    theirs.linear2.load_state_dict(ours.feed_forward[3].state_dict())
    for i, norm in enumerate(ours.norms):
        getattr(theirs, f"norm{i + 1}").load_state_dict(norm.state_dict())


@pytest.mark.parametrize("norm_first", [True, False])
def test_encoder_layer_equals_pytorchs(norm_first):
    torch.manual_seed(0)
    ours = st.EncoderLayer(tiny_config(norm_first=norm_first)).eval()
    theirs = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=norm_first).eval()
    copy_attention(ours.self_attention, theirs.self_attn)
    copy_feed_forward_and_norms(ours, theirs)
    x, mask = torch.randn(3, 7, 32), torch.arange(7)[None] < torch.tensor([7, 3, 5])[:, None]
    with torch.no_grad():
        difference = ours(x, mask[:, None, None, :]) - theirs(x, src_key_padding_mask=~mask)
    assert difference[mask].abs().max() <= 1e-5  # padded positions' own outputs are never read


@pytest.mark.parametrize("norm_first", [True, False])
def test_decoder_layer_equals_pytorchs(norm_first):
    torch.manual_seed(0)
    ours = st.DecoderLayer(tiny_config(norm_first=norm_first)).eval()
    theirs = nn.TransformerDecoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=norm_first).eval()
    copy_attention(ours.self_attention, theirs.self_attn)
    copy_attention(ours.cross_attention, theirs.multihead_attn)
    copy_feed_forward_and_norms(ours, theirs)
    x, memory = torch.randn(3, 5, 32), torch.randn(3, 7, 32)
    mask = torch.arange(7)[None] < torch.tensor([7, 3, 5])[:, None]
    with torch.no_grad():
        y, cache, _ = ours(x, torch.zeros(3, 2, 4, 0, 8), ours.cross_attention.keys_values(memory), mask)
        reference = theirs(x, memory, tgt_mask=nn.Transformer.generate_square_subsequent_mask(5),
                           memory_key_padding_mask=~mask, tgt_is_causal=True)
    assert (y - reference).abs().max() <= 1e-5 and cache.shape == (3, 2, 4, 5, 8)


def test_positions_follow_the_papers_formula():
    table = st.sinusoidal_positions(3, 4, 8)  # positions 3..6
    for row, position in enumerate(range(3, 7)):
        for i in range(4):
            angle = position / 10000 ** (2 * i / 8)
            assert table[row, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[row, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_attention_weights_sum_to_one_ignore_padding_and_match_the_fused_kernel():
    torch.manual_seed(0)
    attention = st.MultiHeadAttention(tiny_config()).eval()
    x, memory = torch.randn(3, 4, 32), torch.randn(3, 6, 32)
    mask = (torch.arange(6)[None] < torch.tensor([6, 2, 4])[:, None])[:, None, None, :]
    output, weights = attention(x, attention.keys_values(memory), mask, need_weights=True)
    assert weights.shape == (3, 4, 4, 6)  # (B, heads, queries, keys)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, 4))
    assert (weights.masked_select(~mask.expand_as(weights)) == 0).all()
    fused, none = attention(x, attention.keys_values(memory), mask)
    assert none is None
    torch.testing.assert_close(fused, output, atol=1e-5, rtol=1e-5)


def test_changing_a_later_target_position_leaves_earlier_outputs_alone():
    torch.manual_seed(0)
    model = tiny_model()
    source, lengths, target_inputs = random_batch()
    logits = model(source, lengths, target_inputs)
    changed = target_inputs.clone()
    changed[:, 3] = (changed[:, 3] - 3) % 6 + 4  # another real character at position 3
    after = model(source, lengths, changed)
    torch.testing.assert_close(after[:, :3], logits[:, :3])
    assert not torch.allclose(after[:, 3:], logits[:, 3:])


def test_padded_source_positions_change_nothing():
    torch.manual_seed(0)
    model = tiny_model()
    source, lengths, target_inputs = random_batch()
    changed = source.clone()
    changed[torch.arange(source.size(1))[None] >= lengths[:, None]] = 7  # real characters where padding was
    torch.testing.assert_close(model(changed, lengths, target_inputs), model(source, lengths, target_inputs))


def test_cached_decoding_equals_uncached():
    """One position at a time through the cache gives the logits of the whole target at once (teacher forcing)."""
    torch.manual_seed(0)
    model = tiny_model()
    source, lengths, target_inputs = random_batch()
    encoded, state = model.encode(source, lengths)
    whole = model.decoder(target_inputs, state, encoded)[0]
    steps = []
    for t in range(target_inputs.size(1)):
        logits, state, _ = model.decoder(target_inputs[:, t:t + 1], state, encoded)
        steps.append(logits)
    assert state.shape == (5, 2, 2, 4, 6, 8)  # (B, layers, keys and values, heads, positions, d_k)
    torch.testing.assert_close(torch.cat(steps, 1), whole, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def uncached_greedy(model, source, lengths, max_length):
    """Greedy decoding written plainly and without the cache: the whole prefix again at every step."""
    tokens, log_probs, finished = torch.full((len(source), 1), st.SOS), torch.zeros(len(source)), torch.zeros(
        len(source), dtype=torch.bool)
    for _ in range(max_length):
        encoded, state = model.encode(source, lengths)
        step_log_probs, best = model.decoder(tokens, state, encoded)[0][:, -1].log_softmax(-1).max(-1)
        log_probs += step_log_probs.masked_fill(finished, 0.0)
        tokens = torch.cat([tokens, best.masked_fill(finished, st.PAD)[:, None]], 1)
        finished |= best == st.EOS
    return tokens[:, 1:], log_probs


def test_beam_search_with_beam_one_equals_greedy():
    """A beam of one, through the cache, writes what plain greedy decoding without it writes, as likely."""
    torch.manual_seed(1)
    model = tiny_model()
    with torch.no_grad():
        model.decoder.output.bias[[st.PAD, st.SOS, st.UNK]] = -1e4
        model.decoder.output.bias[st.EOS] = -3.0
    source, lengths, _ = random_batch()
    for _ in range(200):  # make <eos> likelier until words end at different steps: finished rows must stay finished
        greedy, log_probs = uncached_greedy(model, source, lengths, 12)
        if len({(row + [st.EOS]).index(st.EOS) for row in greedy.tolist()}) > 1:
            break
        with torch.no_grad():
            model.decoder.output.bias[st.EOS] += 0.05
    assert len({(row + [st.EOS]).index(st.EOS) for row in greedy.tolist()}) > 1
    beam, _, beam_log_probs = st.beam_search(model, source, lengths, beam_size=1, max_length=12)
    itos = [str(i) for i in range(10)]
    assert [st.decode_ids(row, itos) for row in greedy.tolist()] == [st.decode_ids(row[0], itos)
                                                                     for row in beam.tolist()]
    torch.testing.assert_close(log_probs, beam_log_probs[:, 0])


def test_beam_scores_equal_teacher_forced_scores():
    torch.manual_seed(0)
    model = tiny_model()
    with torch.no_grad():
        model.decoder.output.bias[st.PAD] = -1e4
    source, lengths, _ = random_batch()
    sequences, _, log_probs = st.beam_search(model, source, lengths, beam_size=4, max_length=8)
    outputs = sequences.reshape(20, -1)
    inputs = torch.cat([torch.full((20, 1), st.SOS), outputs[:, :-1]], dim=1)
    logits = model(source.repeat_interleave(4, 0), lengths.repeat_interleave(4), inputs)
    per_step = logits.log_softmax(-1).gather(-1, outputs.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close((per_step * (outputs != st.PAD)).sum(1), log_probs.reshape(-1), atol=2e-5, rtol=1e-5)
    assert len({tuple(row) for row in outputs.tolist()}) > 5


def test_heatmaps_show_each_layers_cross_attention_heads_averaged():
    torch.manual_seed(0)
    model = tiny_model()
    vocabularies = tiny_vocabularies()
    weights = st.attention_of(model, ["abc", "hgfe"], ["AB", "C"], vocabularies)
    assert weights.shape == (2, 2, 3, 4)  # (words, layers, output steps with <eos>, input characters)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 3))
    assert (weights[1:, :, :, 4:] == 0).all() and (weights[0, :, :, 3:] == 0).all()  # padding gets no weight


def test_warmup_then_the_plateau_rate():
    config = st.Config(learning_rate=1e-3, warmup_steps=100)
    assert st.learning_rate_at(config, {"learning_rate": 1e-3, "step": 0}) == pytest.approx(1e-5)
    assert st.learning_rate_at(config, {"learning_rate": 1e-3, "step": 49}) == pytest.approx(5e-4)
    assert st.learning_rate_at(config, {"learning_rate": 5e-4, "step": 5000}) == pytest.approx(5e-4)


def reversal_data(folder, train_size=1200, dev_size=100):
    rng = random.Random(0)
    words = {"".join(rng.choice("abcdef") for _ in range(rng.randint(2, 5))) for _ in range(3 * train_size)}
    pairs = [(w, w[::-1].upper()) for w in sorted(words)]
    rng.shuffle(pairs)
    folder.mkdir(parents=True)
    for split, rows in (("train", pairs[dev_size:dev_size + train_size]), ("dev", pairs[:dev_size])):
        (folder / f"hi.translit.sampled.{split}.tsv").write_text("".join(f"{n}\t{r}\t1\n" for r, n in rows))


def test_learns_to_reverse_strings(tmp_path):
    reversal_data(tmp_path / "data")
    metrics = st.main(["--data_dir", str(tmp_path / "data"), "--out_dir", str(tmp_path / "out"), "--d_model", "64",
                       "--d_ff", "128", "--epochs", "12", "--batch_size", "32", "--warmup_steps", "100",
                       "--dropout", "0", "--label_smoothing", "0", "--beam_size", "3", "--heatmaps", "2"])
    assert metrics["word_accuracy"] > 0.9
    assert (tmp_path / "out" / "attention-dev.png").stat().st_size > 0


def test_bad_input_gets_one_clear_sentence(tmp_path):
    reversal_data(tmp_path / "data", train_size=60, dev_size=5)
    options = ["--data_dir", str(tmp_path / "data"), "--d_model", "16", "--d_ff", "16", "--epochs", "1",
               "--heatmaps", "0"]
    st.main(options + ["--out_dir", str(tmp_path / "out")])
    bad = tmp_path / "bad.tsv"
    bad.write_text("नमस्ते\tnamaste\t3\nएक\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="line 2 of .*bad.tsv is 'एक', not native<TAB>romanized"):
        st.main(["--evaluate", str(bad), "--checkpoint", str(tmp_path / "out" / "best.pt")])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "hi.translit.sampled.train.tsv").write_text("\n")
    with pytest.raises(SystemExit, match="hi.translit.sampled.train.tsv has no lexicon lines"):
        st.main(options + ["--data_dir", str(tmp_path / "empty"), "--out_dir", str(tmp_path / "new")])
    seq2seq_rnn.main(["--data_dir", str(tmp_path / "data"), "--hidden_size", "8", "--embedding_size", "4", "--epochs",
                      "1", "--heatmaps", "0", "--out_dir", str(tmp_path / "rnn")])
    with pytest.raises(SystemExit, match="is not a checkpoint of this version of seq2seq_transformer.py"):
        st.main(["--translit", "abc", "--checkpoint", str(tmp_path / "rnn" / "best.pt")])
    with pytest.raises(SystemExit, match="--d_model 30 must be a multiple of --n_head 4"):
        st.main(options + ["--d_model", "30", "--out_dir", str(tmp_path / "new")])
    with pytest.raises(SystemExit, match="did you mean --warmup_steps"):
        st.main(options + ["--warmup", "10"])


def test_smoke_run_on_hindi_slice(data_dir, tmp_path):
    out = tmp_path / "out"
    st.main(["--data_dir", str(data_dir / "dakshina" / "hi"), "--max_train_rows", "400", "--max_dev_rows", "30",
             "--epochs", "1", "--d_model", "32", "--d_ff", "64", "--beam_size", "3", "--heatmaps", "2",
             "--out_dir", str(out)])
    for name in ("best.pt", "last.pt", "log.jsonl", "predictions-dev.tsv", "attention-dev.png"):
        assert (out / name).stat().st_size > 0, name
    rows = (out / "predictions-dev.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "input\treference\tprediction\tcorrect" and len(rows) == 31
    results = st.main(["--translit", "namaste duniya", "--checkpoint", str(out / "best.pt"), "--beam_size", "3"])
    assert len(results) == 2 and all(len(options) == 3 for options in results)


# ----------------------------------------------------------------------------------------------------------------------
# One task, two models: everything but the model is the same code in both scripts.

SHARED = ["build_vocabulary", "decode_ids", "make_batch", "batches_by_length", "sequence_loss", "update_average",
          "beam_search", "transliterate", "edit_distance", "transliteration_metrics", "attention_of",
          "save_attention_heatmaps", "evaluate_and_report", "read_lexicon", "write_atomically", "save_checkpoint",
          "load_checkpoint", "start_or_resume", "model_from_checkpoint", "pick_device", "parse_config", "main"]


def top_level_sources(path):
    text = path.read_text()
    return {node.name: ast.get_source_segment(text, node) for node in ast.parse(text).body
            if isinstance(node, (ast.FunctionDef, ast.ClassDef))}


def test_the_pieces_that_are_not_the_model_are_identical():
    rnn, transformer = top_level_sources(ROOT / "seq2seq_rnn.py"), top_level_sources(ROOT / "seq2seq_transformer.py")
    for name in SHARED:
        assert rnn[name] == transformer[name], f"{name} differs: change it in both scripts in one commit"
    for name in ("PAD", "SOS", "EOS", "UNK", "SPECIAL_TOKENS", "ZERO_ALLOWED"):
        assert getattr(seq2seq_rnn, name) == getattr(st, name), name
    # The training loop differs in the model's call, the learning rate (warmup) and torch.compile, nothing else.
    changed = [line for line in difflib.unified_diff(rnn["train"].splitlines(), transformer["train"].splitlines(),
                                                     lineterm="", n=0) if line[:1] in "+-" and line[:3] not in "+++---"]
    assert len(changed) <= 8, "\n".join(changed)
    # The same options for data, training, decoding and output, with the same help.
    rnn_fields = {field.name: field for field in dataclasses.fields(seq2seq_rnn.Config)}
    ours = {field.name: field for field in dataclasses.fields(st.Config)}
    common = {"lang", "direction", "data_dir", "max_train_rows", "max_dev_rows", "epochs", "batch_size",
              "learning_rate", "lr_decay", "label_smoothing", "grad_clip", "average_decay", "patience", "max_minutes",
              "resume", "seed", "beam_size", "length_penalty", "max_output_length", "checkpoint", "evaluate",
              "translit", "heatmaps", "out_dir", "device", "dtype", "dropout", "encoder_layers", "decoder_layers"}
    assert common <= rnn_fields.keys() & ours.keys()
    for name in common - {"epochs", "batch_size", "learning_rate", "dropout", "encoder_layers", "decoder_layers",
                          "out_dir"}:
        assert rnn_fields[name].default == ours[name].default, name
