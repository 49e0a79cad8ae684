"""torch's conventions in nlseq's modules: state order, batch_first, layouts, rotary embeddings."""

from __future__ import annotations

import pytest
import torch

import nlseq
from nlseq.nn import AnalogGRU, AnalogLSTM, ParaGRU, ParaLSTM, SoftplusAttention, rotary_embedding
from nlseq.reference.softplus_attention import softplus_attention_naive


def test_one_batch_first_default_across_modules():
    import inspect

    for cls in (ParaGRU, ParaLSTM, AnalogLSTM, AnalogGRU):
        assert inspect.signature(cls.__init__).parameters["batch_first"].default is True, cls.__name__


def test_para_lstm_state_order_is_torch_h_then_c():
    torch.manual_seed(0)
    m = ParaLSTM(4, 6, heads=1, backend="reference", mode="sequential").double()
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    y, (h_n, c_n) = m(x)
    torch.testing.assert_close(h_n[0], y[:, -1])  # h is the output, as in torch.nn.LSTM
    # continuing from (h_n, c_n) equals running the concatenated sequence
    x2 = torch.randn(2, 3, 4, dtype=torch.float64)
    y2, (h2, c2) = m(x2, (h_n, c_n))
    y_all, (h_all, c_all) = m(torch.cat([x, x2], 1))
    torch.testing.assert_close(y2, y_all[:, 5:])
    torch.testing.assert_close(c2, c_all)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_bthd_layout_equals_bhtd(backend):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 7, 4, 8, generator=g, dtype=torch.float64)  # [B, T, H, D]
    k = torch.randn(2, 9, 2, 8, generator=g, dtype=torch.float64)
    v = torch.randn(2, 9, 2, 8, generator=g, dtype=torch.float64)
    o = nlseq.softplus_attention(q, k, v, layout="bthd", kv_offset=2, backend=backend)
    ref = nlseq.softplus_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), kv_offset=2, backend=backend
    ).transpose(1, 2)
    assert o.shape == q.shape
    torch.testing.assert_close(o, ref, atol=0, rtol=0)


def test_a_call_that_only_fits_the_other_layout_is_refused():
    q = torch.randn(1, 12, 4, 8)  # [B, T, H, D] with H = 4, Hkv = 2: read as bhtd, H = 12 and Hkv = 10 clash
    k = torch.randn(1, 10, 2, 8)
    with pytest.raises(ValueError, match="layout='bthd'"):
        nlseq.softplus_attention(q, k, k)
    with pytest.raises(ValueError, match="layout must be one of"):
        nlseq.softplus_attention(q, k, k, layout="thd")


def test_rotary_embedding_is_a_relative_rotation():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 1, 1, 16, generator=g, dtype=torch.float64)
    k = torch.randn(1, 1, 1, 16, generator=g, dtype=torch.float64)

    def score(i, j):
        return (rotary_embedding(q, torch.tensor([i])) * rotary_embedding(k, torch.tensor([j]))).sum()

    torch.testing.assert_close(score(7, 3), score(104, 100))  # depends on i − j only
    torch.testing.assert_close(rotary_embedding(q, torch.tensor([5])).norm(), q.norm())  # norm kept
    with pytest.raises(ValueError, match="head dim must be even"):
        rotary_embedding(torch.randn(1, 1, 2, 3), torch.arange(2))


def test_rope_module_equals_the_op_on_rotated_q_k_and_decodes_with_a_cache():
    torch.manual_seed(3)
    m = SoftplusAttention(32, 4, 2, rope_theta=500.0, reweight_p=3.0, backend="reference").double()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    out, _ = m(x)
    q = m._heads(m.q_proj(x), 4)
    k = m._heads(m.k_proj(x), 2)
    v = m._heads(m.v_proj(x), 2)
    pos = torch.arange(9)
    o = softplus_attention_naive(rotary_embedding(q, pos, 500.0), rotary_embedding(k, pos, 500.0), v, reweight_p=3.0)
    torch.testing.assert_close(out, m.o_proj(o.transpose(1, 2).reshape(2, 9, 32)))
    first, cache = m(x[:, :5])
    steps = [first]
    for t in range(5, 9):
        y, cache = m(x[:, t : t + 1], cache)
        steps.append(y)
    torch.testing.assert_close(torch.cat(steps, 1), out)


def test_custom_rotary_hook_gets_the_positions():
    seen = []

    def hook(q, k, positions):
        seen.append(positions.clone())
        return q, k

    m = SoftplusAttention(16, 2, rotary=hook, backend="reference")
    _, cache = m(torch.randn(1, 3, 16))
    m(torch.randn(1, 2, 16), cache)
    m(torch.randn(1, 2, 16), positions=torch.tensor([10, 11]))
    assert [s.tolist() for s in seen] == [[0, 1, 2], [3, 4], [10, 11]]
    with pytest.raises(ValueError, match="rope_theta or rotary, not both"):
        SoftplusAttention(16, 2, rotary=hook, rope_theta=1e4)
    with pytest.raises(ValueError, match="positions must be"):
        m(torch.randn(1, 2, 16), positions=torch.arange(3))


def test_nladc_tensors_feed_analog_mvm_without_casts():
    from nlseq.analog import NLADC

    adc = NLADC("sigmoid", 5)
    assert adc.thresholds.dtype == torch.float64
    g = torch.Generator().manual_seed(5)
    x, w = torch.randn(3, 4, generator=g), torch.randn(6, 4, generator=g)
    cs = torch.ones(6)
    y64 = nlseq.analog_mvm(x, w, cs, adc.thresholds, adc.levels, backend="reference")
    y32 = nlseq.analog_mvm(x, w, cs, adc.thresholds.float(), adc.levels.float(), backend="reference")
    assert torch.equal(y64, y32)
