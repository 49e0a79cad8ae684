"""nlseq.analog.convert / program / drift / reset_noise / to_digital on a small torch model."""

from __future__ import annotations

import pytest
import torch
import torch.nn as tnn

import nlseq
from nlseq.analog import CrossbarConfig
from nlseq.nn import AnalogGRU, AnalogLinear, AnalogLSTM


class Tagger(tnn.Module):
    def __init__(self):
        super().__init__()
        self.embed = tnn.Embedding(11, 8)
        self.rnn = tnn.LSTM(8, 12, batch_first=True)
        self.head = tnn.Sequential(tnn.Linear(12, 16), tnn.ReLU(), tnn.GRU(16, 6, batch_first=True))
        self.out = tnn.Linear(6, 5)

    def forward(self, ids):
        y, _ = self.rnn(self.embed(ids))
        y = self.head[1](self.head[0](y))
        y, _ = self.head[2](y)
        return self.out(y)


def model():
    torch.manual_seed(0)
    return Tagger().eval()


IDS = torch.randint(0, 11, (3, 7), generator=torch.Generator().manual_seed(1))


def test_every_supported_layer_is_converted_with_its_weights():
    m = model()
    a = nlseq.analog.convert(m, CrossbarConfig.ideal(), adc_bits=8, exclude=["out"])
    assert isinstance(a.rnn, AnalogLSTM) and isinstance(a.head[0], AnalogLinear) and isinstance(a.head[2], AnalogGRU)
    assert isinstance(a.out, tnn.Linear) and not isinstance(a.out, AnalogLinear)  # excluded
    assert isinstance(m.rnn, tnn.LSTM)  # not in place by default
    assert a.rnn.batch_first and a.head[2].batch_first  # layouts follow the digital layers
    torch.testing.assert_close(a.rnn.weight_hh_l0, m.rnn.weight_hh_l0, atol=0, rtol=0)
    seeds = [mod.seed for _, mod in nlseq.analog.analog_modules(a)]
    assert seeds == [0, 1, 2]  # independent noise streams per layer
    with torch.no_grad():  # ideal crossbars + 8-bit ADCs: close to the digital model
        err = (a(IDS) - m(IDS)).abs().max().item()
    assert err < 0.1


def test_program_drift_and_reset_noise_replay_the_same_devices():
    cfg = CrossbarConfig(prog_noise=0.03, read_noise=0.02, out_noise=0.01, drift_nu=0.06)
    a = nlseq.analog.convert(model(), cfg)
    nlseq.analog.program(a, seed=5)
    with torch.no_grad():
        y1 = a(IDS)
        nlseq.analog.reset_noise(a)
        y1_again = a(IDS)
        y2 = a(IDS)  # fresh read noise
    assert torch.equal(y1, y1_again) and not torch.equal(y1, y2)

    W0 = a.head[0]._programmed[0].weight.clone()
    nlseq.analog.drift(a, 3600.0)
    assert all(mod.config.t_eval == 3600.0 for _, mod in nlseq.analog.analog_modules(a))
    W1 = a.head[0]._programmed[0].weight
    factor = (3600.0 / CrossbarConfig.T0) ** -0.06  # same devices, aged: every conductance scaled alike
    torch.testing.assert_close(W1, W0 * factor, atol=1e-6, rtol=1e-5)
    nlseq.analog.drift(a, CrossbarConfig.T0)
    torch.testing.assert_close(a.head[0]._programmed[0].weight, W0, atol=0, rtol=0)


def test_to_digital_round_trip():
    m = model()
    back = nlseq.analog.to_digital(nlseq.analog.convert(m, CrossbarConfig()))
    assert type(back.rnn) is tnn.LSTM and type(back.head[0]) is tnn.Linear and type(back.head[2]) is tnn.GRU
    assert back.rnn.batch_first
    with torch.no_grad():
        torch.testing.assert_close(back(IDS), m(IDS), atol=0, rtol=0)


def test_a_bare_layer_converts_and_bad_arguments_are_named():
    lin = tnn.Linear(4, 3)
    assert isinstance(nlseq.analog.convert(lin), AnalogLinear)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        nlseq.analog.convert("model")
    with pytest.raises(TypeError, match="config must be a CrossbarConfig"):
        nlseq.analog.convert(lin, {"prog_noise": 0.1})
    with pytest.raises(ValueError, match="adc_bits must be an int"):
        nlseq.analog.convert(lin, adc_bits=2.5)
    with pytest.raises(ValueError, match="t_eval must be a finite number"):
        nlseq.analog.drift(lin, -1.0)
    with pytest.raises(TypeError, match="exclude must be a list"):
        nlseq.analog.convert(lin, exclude="out")
