"""attn_implementation="lssa" / "lssar" in Hugging Face transformers, with tiny random models (no downloads)."""

from __future__ import annotations

import pytest
import torch

import nlseq
from nlseq.reference.softplus_attention import softplus_attention_naive

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, DynamicCache, GPT2Config, LlamaConfig  # noqa: E402

import nlseq.integrations.transformers as nlseq_hf  # noqa: E402

nlseq_hf.register()

VOCAB = 61


def llama_config(**kw):
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        **kw,
    )


def gpt2_config(**kw):
    return GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        attn_pdrop=0.0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
        **kw,
    )


CONFIGS = {"llama": llama_config, "gpt2": gpt2_config}


def make_model(arch, impl, **kw):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(CONFIGS[arch](**kw), attn_implementation=impl).eval()


@pytest.mark.parametrize("impl", ["lssa", "lssar"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_kv_cache_decoding_matches_full_forward(arch, impl):
    model = make_model(arch, impl)
    assert model.config._attn_implementation == impl
    ids = torch.randint(0, VOCAB, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :6], past_key_values=DynamicCache(config=model.config), use_cache=True)
        steps = [out.logits]
        for t in range(6, 13):
            out = model(ids[:, t : t + 1], past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["lssa", "lssar"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generate_is_greedy_consistent_and_causal(arch, impl):
    model = make_model(arch, impl)
    ids = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
        logits = model(out).logits
        assert torch.equal(logits[:, 4:10].argmax(-1), out[:, 5:11])
        changed = out.clone()
        changed[:, -1] = (changed[:, -1] + 1) % VOCAB  # a future token must not change earlier logits
        torch.testing.assert_close(model(changed).logits[:, :-1], logits[:, :-1])


@pytest.mark.parametrize("impl", ["lssa", "lssar"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_left_padding_is_masked(arch, impl):
    """A left-padded row gives the logits of the same tokens run alone: pad keys are not counted in N_i."""
    model = make_model(arch, impl)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, VOCAB, (2, 9), generator=g)
    pad = 3
    mask = torch.ones_like(ids)
    mask[1, :pad] = 0
    ids[1, :pad] = 0
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        batch = model(ids, attention_mask=mask, position_ids=position_ids).logits
        alone = model(ids[1:, pad:]).logits
    torch.testing.assert_close(batch[1:, pad:], alone, atol=1e-5, rtol=1e-5)


def test_lssar_reads_p_from_config():
    ids = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        default = make_model("llama", "lssar")(ids).logits  # p = 15
        p3 = make_model("llama", "lssar", lssar_p=3.0)(ids).logits
    assert not torch.allclose(default, p3)


def test_masked_path_equals_kernel_path():
    """The dense masked path (used under padding) agrees with nlseq.softplus_attention on a causal mask."""
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 4, 7, 16, generator=g, dtype=torch.float64)
    k = torch.randn(2, 2, 10, 16, generator=g, dtype=torch.float64)
    v = torch.randn(2, 2, 10, 16, generator=g, dtype=torch.float64)
    mask = (torch.arange(10)[None, :] <= torch.arange(7)[:, None] + 3)[None, None]
    for p in (None, 15.0):
        dense = nlseq_hf._masked_attention(q, k, v, mask, p)
        fused = nlseq.softplus_attention(q, k, v, reweight_p=p, kv_offset=3)
        torch.testing.assert_close(dense, fused)
        torch.testing.assert_close(dense, softplus_attention_naive(q, k, v, reweight_p=p, kv_offset=3))


def test_dropout_raises():
    model = make_model(
        "gpt2",
        "lssa",
    ).train()
    model.config.attn_pdrop = 0.0
    for block in model.transformer.h:
        block.attn.attn_dropout.p = 0.1
    with pytest.raises(ValueError, match="dropout"):
        model(torch.zeros(1, 4, dtype=torch.long))


def test_register_rejects_bad_p():
    with pytest.raises(ValueError, match="p must be"):
        nlseq_hf.register(p=0)


def _no_dense_path(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the dense O(T²) masked path ran")

    monkeypatch.setattr(nlseq_hf, "_masked_attention", refuse)


@pytest.mark.parametrize("impl", ["lssa", "lssar"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batches_run_the_fused_kernels_and_match_unpadded_rows(monkeypatch, side, impl):
    """Padding is unpadded to cu_seqlens (no dense mask), and every real row equals the row run alone."""
    model = make_model("llama", impl).double()
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(1, VOCAB, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    lengths = [10, 6, 3]
    for b, n in enumerate(lengths):
        pads = slice(0, 10 - n) if side == "left" else slice(n, 10)
        mask[b, pads] = 0
        ids[b, pads] = 0
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    _no_dense_path(monkeypatch)
    with torch.no_grad():
        batch = model(ids, attention_mask=mask, position_ids=position_ids).logits
        for b, n in enumerate(lengths):
            real = slice(10 - n, 10) if side == "left" else slice(0, n)
            alone = model(ids[b : b + 1, real]).logits
            torch.testing.assert_close(batch[b : b + 1, real], alone, atol=1e-10, rtol=1e-10)


def test_padded_path_gradients_equal_the_dense_path():
    g = torch.Generator().manual_seed(8)
    q = torch.randn(2, 4, 6, 8, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 2, 6, 8, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 2, 6, 8, generator=g, dtype=torch.float64, requires_grad=True)
    pad = torch.ones(2, 6, dtype=torch.bool)
    pad[1, :2] = False
    pos = torch.arange(6)
    dense_mask = pad[:, None, None, :] & (pos[None, :] <= pos[:, None])
    for p in (None, 3.0):
        a = nlseq_hf._padded_attention(q, k, v, pad, True, p)
        b = nlseq_hf._masked_attention(q, k, v, dense_mask, p)
        real = pad[:, None, :, None].expand_as(a)
        torch.testing.assert_close(a[real], b[real])
        w = torch.randn(a.shape, generator=g, dtype=torch.float64) * real
        ga = torch.autograd.grad((a * w).sum(), (q, k, v))
        gb = torch.autograd.grad((b * w).sum(), (q, k, v))
        for x, y in zip(ga, gb):
            torch.testing.assert_close(x, y)


def test_generate_with_left_padding_uses_the_fused_path(monkeypatch):
    model = make_model("llama", "lssa")
    ids = torch.randint(1, VOCAB, (2, 6), generator=torch.Generator().manual_seed(9))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    ids[1, :2] = 0
    _no_dense_path(monkeypatch)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
        alone = model.generate(ids[1:, 2:], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(out[1:, 2:], alone)


def test_dropout_can_be_ignored_with_a_warning():
    model = make_model("gpt2", "lssa").train()
    for block in model.transformer.h:
        block.attn.attn_dropout.p = 0.1
    nlseq_hf.register(attention_dropout="ignore")
    try:
        with pytest.warns(UserWarning, match="dropout 0.1 is skipped"):
            model(torch.zeros(1, 4, dtype=torch.long))
    finally:
        nlseq_hf.register()
    with pytest.raises(ValueError, match="attention_dropout must be one of"):
        nlseq_hf.register(attention_dropout="drop")
