"""ParaRNNConfig / ParaRNNForCausalLM: Auto* registration, training, save/load, generate with a recurrent cache."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from nlseq.integrations import pararnn_lm  # noqa: E402

pararnn_lm.register()
VOCAB = 37


def tiny(cell, **kw):
    torch.manual_seed(0)
    cfg = pararnn_lm.ParaRNNConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        cell=cell,
        heads=2,
        intermediate_size=24,
        backend="reference",
        **kw,
    )
    return AutoModelForCausalLM.from_config(cfg)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_auto_classes_build_the_model(cell):
    model = tiny(cell)
    assert isinstance(model, pararnn_lm.ParaRNNForCausalLM)
    assert isinstance(AutoConfig.for_model("nlseq_pararnn"), pararnn_lm.ParaRNNConfig)
    # tied head, and the cells keep the paper's initialisation (bias row 0 = −linspace(0, 1, N))
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(model.model.layers[0].cell.bias[0].detach(), -torch.linspace(0, 1, 16))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_stepwise_decoding_equals_the_full_forward_fp64(cell):
    model = tiny(cell, mode="sequential").double().eval()
    ids = torch.randint(0, VOCAB, (3, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :4], use_cache=True)
        steps = [out.logits]
        for t in range(4, 11):
            out = model(ids[:, t : t + 1], cache=out["cache"], use_cache=True)
            steps.append(out.logits)
    assert out["cache"].seen_tokens == 11
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_generate_matches_greedy_full_forwards(cell):
    model = tiny(cell).eval()
    ids = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
        seq = ids
        for _ in range(6):  # greedy decoding by full forwards over the growing sequence, no cache
            nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(gen, seq)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_training_lowers_the_loss_and_save_load_round_trips(cell, tmp_path):
    model = tiny(cell, mode="newton")
    g = torch.Generator().manual_seed(3)
    data = torch.randint(0, VOCAB, (4, 24), generator=g)
    data[:, 1::2] = (data[:, ::2] + 1) % VOCAB  # a learnable pattern: odd tokens follow the even ones
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(25):
        loss = model(data, labels=data).loss
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.2
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)

    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(loaded, pararnn_lm.ParaRNNForCausalLM) and loaded.config.cell == cell
    model.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(data).logits, model(data).logits, atol=0, rtol=0)


def test_labels_ignore_index_and_padding_rules():
    model = tiny("gru").eval()
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(4))
    labels = ids.clone()
    labels[:, 5:] = -100  # right padding is ignored by the loss...
    with torch.no_grad():
        a = model(ids, labels=labels).loss
        b = model(ids[:, :5], labels=ids[:, :5]).loss  # ...and pads after the real tokens change nothing before them
    torch.testing.assert_close(a, b)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[0, 0] = 0  # a left pad would flow into the recurrent state
    with pytest.raises(ValueError, match="right padding"):
        model(ids, attention_mask=mask)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="cell must be one of"):
        pararnn_lm.ParaRNNConfig(cell="rnn")
    with pytest.raises(ValueError, match="divisible by heads"):
        pararnn_lm.ParaRNNConfig(hidden_size=10, heads=4)
    with pytest.raises(ValueError, match="num_hidden_layers must be a positive int"):
        pararnn_lm.ParaRNNConfig(num_hidden_layers=0)
