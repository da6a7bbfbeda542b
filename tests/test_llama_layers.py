"""Llama-family decoder layers read from a Hugging Face directory (`tarflow.nn.llama`): the same function as
transformers' own modules for each family, cached chunks equal to the full pass in float64, and clear errors for
what the layers do not reproduce."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import write_llama_directory
from tarflow.errors import ConfigError
from tarflow.nn import KVCache
from tarflow.nn.llama import LlamaSpec, llama_layers, load_llama_weights, read_config_text, read_tensors

pytestmark = pytest.mark.usefixtures("one_thread")

CONTEXT = 16


def loaded_layers(directory: str, dtype: torch.dtype = torch.float32) -> torch.nn.ModuleList:
    layers = llama_layers(LlamaSpec.from_json(read_config_text(directory), CONTEXT), CONTEXT)
    load_llama_weights(layers, directory)
    return layers.to(dtype)


def run(layers, h, cache=None, pos=0):
    for index, layer in enumerate(layers):
        h = layer(h, None, None if cache is None else cache.layer(index), pos)
    return h


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_layers_compute_what_transformers_computes(family, tmp_path):
    transformers = pytest.importorskip("transformers", reason="the comparison needs transformers (tarflow[text])")
    name = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}[family]
    torch.manual_seed(0)
    config = getattr(transformers, f"{name}Config")(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                                    num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                                    vocab_size=40, max_position_embeddings=64, attention_bias=True)
    reference = getattr(transformers, f"{name}ForCausalLM")(config).eval()
    with torch.no_grad():  # biases and norm gains away from their initial zeros and ones
        for parameter in reference.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    reference.save_pretrained(tmp_path)
    layers = loaded_layers(str(tmp_path))
    h = torch.randn(2, 10, 32)
    with torch.no_grad():
        expected = reference.model(inputs_embeds=h).last_hidden_state
        got = reference.model.norm(run(layers, h))
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_cached_chunks_equal_the_full_pass(tmp_path):
    layers = loaded_layers(write_llama_directory(tmp_path, "qwen3", heads=4, kv_heads=1), torch.float64)
    h = torch.randn(3, 12, 32, dtype=torch.float64)
    with torch.no_grad():
        full = run(layers, h)
        attention = layers[0].attn
        cache = KVCache(len(layers), 3, attention.kv_heads, CONTEXT, attention.head_dim, torch.float64, h.device)
        chunks = [run(layers, h[:, start:stop], cache, start) for start, stop in ((0, 5), (5, 6), (6, 12))]
    assert torch.allclose(torch.cat(chunks, dim=1), full, rtol=0, atol=1e-12)


def test_no_position_sees_the_future(tmp_path):
    layers = loaded_layers(write_llama_directory(tmp_path), torch.float64)
    h = torch.randn(1, 10, 32, dtype=torch.float64)
    changed = h.clone()
    changed[:, 6] += 1
    with torch.no_grad():
        old, new = run(layers, h), run(layers, changed)
    assert torch.equal(old[:, :6], new[:, :6]) and not torch.allclose(old[:, 6], new[:, 6])


def test_weights_come_from_the_directory_and_its_shards(tmp_path):
    directory = write_llama_directory(tmp_path / "whole")
    tensors = read_tensors(tmp_path / "whole")
    layers = loaded_layers(directory)
    assert torch.equal(layers[1].self_attn.k_proj.weight, tensors["model.layers.1.self_attn.k_proj.weight"])
    from safetensors.torch import save_file

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(read_config_text(directory))
    names = sorted(tensors)
    weight_map = {name: f"part-{index % 2}.safetensors" for index, name in enumerate(names)}
    for part in set(weight_map.values()):
        save_file({name: tensors[name] for name in names if weight_map[name] == part}, str(sharded / part))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert all(torch.equal(a, b) for a, b in zip(loaded_layers(str(sharded)).state_dict().values(),
                                                   layers.state_dict().values()))


def spec_text(**options) -> str:
    config = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 64, **options}
    return json.dumps(config)


@pytest.mark.parametrize("options, message", [
    ({"model_type": "gpt2"}, "supported are the Llama family"),
    ({"hidden_act": "gelu"}, "silu"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, "RoPE scaling 'llama3'"),
    ({"model_type": "mistral", "sliding_window": 8}, "sliding window of 8"),
])
def test_spec_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        LlamaSpec.from_json(spec_text(**options), CONTEXT)


def test_spec_defaults():
    spec = LlamaSpec.from_json(spec_text(rope_theta=5e5), CONTEXT)
    assert (spec.kv_heads, spec.head_dim, spec.rope_base, spec.qkv_bias, spec.qk_norm) == (4, 8, 5e5, False, False)
    qwen2 = LlamaSpec.from_json(spec_text(model_type="qwen2", sliding_window=4, use_sliding_window=False), CONTEXT)
    assert (qwen2.qkv_bias, qwen2.output_bias) == (True, False)


def test_directory_errors(tmp_path):
    with pytest.raises(ConfigError, match="holds no config.json"):
        read_config_text(str(tmp_path))
    (tmp_path / "config.json").write_text(spec_text())
    layers = llama_layers(LlamaSpec.from_json(spec_text(), CONTEXT), CONTEXT)
    with pytest.raises(ConfigError, match="holds no weights"):
        load_llama_weights(layers, str(tmp_path))
    other = write_llama_directory(tmp_path / "other", hidden=16)
    with pytest.raises(ConfigError, match="do not fit"):
        load_llama_weights(layers, other)
