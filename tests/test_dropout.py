"""Residual dropout (`FlowConfig.dropout`): it acts in training only, so likelihoods, sampling and every contract
test (all in eval mode) are those of the same weights without it."""

from __future__ import annotations

import json

import pytest
import torch

from tarflow import ConfigError, FlowConfig, TarFlow
from tarflow.cli import main
from tarflow.flows.language import DiscreteAR
from tarflow.nn.transformer import TransformerLayer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_layer_drops_in_training_only():
    torch.manual_seed(0)
    layer, plain = TransformerLayer(16, 8, 2, dropout=0.5), TransformerLayer(16, 8, 2)
    plain.load_state_dict(layer.state_dict())
    h = torch.randn(2, 5, 16)
    layer.train()
    assert not torch.equal(layer(h), layer(h))  # a new mask each call
    layer.eval()
    assert torch.equal(layer(h), plain.eval()(h))


@pytest.mark.parametrize("options", [dict(), dict(modality="text", vocabulary="abc", context=8, embed_dim=2,
                                                  architecture="autoregressive")], ids=["flow", "text-baseline"])
def test_models_with_dropout_are_their_weights_in_eval_mode(options):
    settings = dict(image_size=4, patch_size=2, width=16, head_dim=8, num_blocks=2, layers_per_block=1)
    config = FlowConfig(**{**settings, **options, "dropout": 0.3})
    torch.manual_seed(0)
    model = DiscreteAR(config) if config.architecture == "autoregressive" else TarFlow(config)
    plain = type(model)(FlowConfig(**{**settings, **options}))
    plain.load_state_dict(model.state_dict())
    if config.architecture == "autoregressive":
        data = torch.randint(0, 3, (2, 8))
    else:
        data = torch.rand(2, 1, 4, 4) * 2 - 1

    def run(net):
        return net.log_prob(data)

    for parameter in model.parameters():  # weights away from the identity start, so every layer counts
        torch.nn.init.normal_(parameter, std=0.2)
    plain.load_state_dict(model.state_dict())
    model.train()
    assert not torch.equal(run(model), run(model))
    model.eval()
    assert torch.equal(run(model), run(plain.eval()))


def test_dropout_errors():
    with pytest.raises(ConfigError, match=r"dropout must be in \[0, 1\)"):
        FlowConfig(dropout=1.0)


def test_cli_trains_with_dropout(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--steps", "2", "--dropout", "0.2", "--eval-every", "0",
                 "--sample-every", "0", "--out", str(run), "--no-progress"]) == 0
    assert json.loads((run / "model" / "config.json").read_text())["model"]["dropout"] == 0.2


def test_llama_layers_drop_in_training_only(tmp_path):
    """The language-model stream of a pretzel model from a Llama directory takes the same residual dropout."""
    from pathlib import Path

    from conftest import write_llama_directory
    from tarflow.nn.llama import LlamaLayer, LlamaSpec

    directory = Path(write_llama_directory(tmp_path / "llama"))
    spec = LlamaSpec.from_json((directory / "config.json").read_text(), 16)
    torch.manual_seed(0)
    layer, plain = LlamaLayer(spec, 16, dropout=0.5), LlamaLayer(spec, 16)
    plain.load_state_dict(layer.state_dict())
    h = torch.randn(2, 5, spec.hidden_size)
    layer.train()
    assert not torch.equal(layer(h), layer(h))
    layer.eval()
    assert torch.equal(layer(h), plain.eval()(h))
