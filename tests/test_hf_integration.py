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
    return LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                       bos_token_id=None, eos_token_id=None, pad_token_id=None, **kw)


def gpt2_config(**kw):
    return GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, attn_pdrop=0.0,
                      resid_pdrop=0.0, embd_pdrop=0.0, bos_token_id=None, eos_token_id=None, **kw)


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
            out = model(ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
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
    model = make_model("gpt2", "lssa", ).train()
    model.config.attn_pdrop = 0.0
    for block in model.transformer.h:
        block.attn.attn_dropout.p = 0.1
    with pytest.raises(ValueError, match="dropout"):
        model(torch.zeros(1, 4, dtype=torch.long))


def test_register_rejects_bad_p():
    with pytest.raises(ValueError, match="p must be"):
        nlseq_hf.register(p=0)
