"""Shared fixtures: one tiny float64 model of every kind the config allows, with randomised weights.

Kinds: every transform (affine with exp scale, affine with softplus scale and a soft clip, additive, Mix-1
mixture, Mix-d mixture) x block layout (one layer count with TarFlow's zero start and learned positions; one layer count
per block with a learned start token and rotary positions) x token order (alternate, same) x conditioning
(none, class, class on the last block only).

A freshly built TarFlow has zero-initialised output projections, so every block is the identity and
most contract checks would pass trivially. The fixture re-draws every parameter (and, for additive
models, the learned prior std) under a fixed seed so that each block really transforms its input.
"""

from __future__ import annotations

import itertools
import socket

import pytest
import torch

from tarflow import FlowConfig, TarFlow

NUM_CLASSES = 3
BATCH = 4

TRANSFORMS = {"affine": {"transform": "affine"},
              "softplus": {"transform": "affine", "scale": "softplus", "log_scale_clip": 2.0},
              "additive": {"transform": "additive"},
              "mixture": {"transform": "mixture", "mixture_components": 2},
              "mixture-d": {"transform": "mixture-d", "mixture_components": 2}}
LAYOUTS = {"uniform": {"layers_per_block": 1},
           "per-block": {"layers_per_block": [1, 1, 2], "start_token": "learned", "positions": "rope"}}
ORDERS = {"alternate": {"order": "alternate"}, "same": {"order": "same"}}
CONDITIONING = {"uncond": {"num_classes": 0}, "cond": {"num_classes": NUM_CLASSES},
                "top-only": {"num_classes": NUM_CLASSES, "condition_top_only": True}}
KINDS = [pytest.param({**TRANSFORMS[t], **LAYOUTS[l], **ORDERS[o], **CONDITIONING[c]}, id=f"{c}-{t}-{l}-{o}")
         for t, l, o, c in itertools.product(TRANSFORMS, LAYOUTS, ORDERS, CONDITIONING)]
# STARFlow: 4-channel latents of a tiny random autoencoder (2x2 grid, patch 1), a deep-shallow stack with the
# class on the deep block only, softplus scale with a soft clip, a learned start token and RoPE.
LATENTS = {"modality": "latents", "image_size": 2, "channels": 4, "patch_size": 1, "latent_scale": 1.5,
           "latent_shift": 0.1, "layers_per_block": [1, 1, 2], "start_token": "learned", "positions": "rope",
           "transform": "affine", "scale": "softplus", "log_scale_clip": 2.0}
KINDS += [pytest.param({**LATENTS, **CONDITIONING[c]}, id=f"{c}-latents-deep-shallow") for c in ("uncond", "top-only")]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a test server or a process group)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tiny_config(num_classes: int = 0, transform: str = "affine", **options) -> FlowConfig:
    # T = (4/2)^2 = 4 tokens of D = 2*2*2 = 8 dims; 32 dims per image; 3 blocks so both token orders
    # appear and the first and last blocks share one.
    settings = dict(image_size=4, channels=2, patch_size=2, width=16, num_blocks=3, layers_per_block=1,
                    head_dim=8, mlp_ratio=2, num_classes=num_classes, transform=transform)
    return FlowConfig(**{**settings, **options})


def randomise(model: TarFlow, seed: int = 0, std: float = 0.2) -> TarFlow:
    """Redraw every parameter ~ N(0, std^2) (LayerNorm gains around 1) under a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * std
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
                p.copy_(1 + noise)
            else:
                p.copy_(noise)
    return model


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Point $TARFLOW_CACHE at a folder of the test session's, so downloads, decoded splits, encoded latents and
    classifiers written by tests (and the CLI processes they start) never land in the user's ~/.cache/tarflow."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TARFLOW_CACHE", str(tmp_path_factory.mktemp("tarflow-cache")))
        yield


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny-model tests on one intra-op thread, then restore the setting.

    Ops on these models take microseconds; with several threads on a busy 2-core machine, thread
    hand-offs dominate and the tests run ~50x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def torchscript_fid_features(monkeypatch):
    """FID features from TorchScript in every test: `Pool` does not export to ONNX. The ONNX Runtime path has its
    own tests (test_fid_runtime.py, test_inception.py), which ask for it by name or clear this."""
    monkeypatch.setenv("TARFLOW_FID_RUNTIME", "torch")


class Pool(torch.nn.Module):
    """A cheap stand-in for Inception: 4x4 average pool of every channel -> 48 features, shaped (N, 48, 1, 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).reshape(x.shape[0], 48, 1, 1)


def scripted(module, path):
    """``module`` saved as a TorchScript file at ``path`` (a feature extractor as FID reads one)."""
    torch.jit.save(torch.jit.script(module), str(path))
    return path


@pytest.fixture(scope="module")
def pool_weights(tmp_path_factory):
    """The scripted `Pool`, as a FID feature-extractor file."""
    return scripted(Pool(), tmp_path_factory.mktemp("fx") / "pool.pt")


def latent_config(autoencoder, **options) -> FlowConfig:
    """4x4x4 latents of 8x8 digits (the tiny autoencoder downsamples x2), patch 1, a deep-shallow stack."""
    settings = dict(modality="latents", autoencoder=str(autoencoder), image_size=4, channels=4, patch_size=1,
                    width=16, num_blocks=3, layers_per_block=[1, 1, 2], head_dim=8, num_classes=10,
                    condition_top_only=True, start_token="learned", positions="rope", scale="softplus",
                    log_scale_clip=4.0, latent_scale=2.0, latent_shift=0.25)
    return FlowConfig(**{**settings, **options})


def save_tiny_autoencoder(path, channels: int = 1, latent_channels: int = 4, seed: int = 0, metadata=None):
    """A random KL autoencoder (downsample x2) saved in ``path``, for latent models."""
    from tarflow.autoencoders import AutoencoderConfig, KLAutoencoder

    torch.manual_seed(seed)
    config = AutoencoderConfig(channels=channels, latent_channels=latent_channels, widths=[4, 8], norm_groups=4)
    return KLAutoencoder(config).save_pretrained(path, metadata)


def tiny_diffusers_vae(channels: int = 3, **layout):
    """A random diffusers AutoencoderKL (downsample x2), or a skip when the diffusers extra is not installed."""
    diffusers = pytest.importorskip("diffusers", reason="the diffusers extra is not installed")
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(in_channels=channels, out_channels=channels, block_out_channels=(8, 8),
                                   down_block_types=("DownEncoderBlock2D",) * 2,
                                   up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=4,
                                   sample_size=8, **layout).eval()


@pytest.fixture(scope="session")
def tiny_autoencoder_dir(tmp_path_factory):
    return save_tiny_autoencoder(tmp_path_factory.mktemp("autoencoder") / "model")


@pytest.fixture(scope="session")
def frame_autoencoder_dir(tmp_path_factory):
    """A random autoencoder of 8x8 grey frames into 1x4x4 latents, for video models on latent frames."""
    return save_tiny_autoencoder(tmp_path_factory.mktemp("frame-autoencoder") / "model", latent_channels=1)


@pytest.fixture(params=KINDS)
def model(request) -> TarFlow:
    torch.manual_seed(0)
    options = dict(request.param)
    if options.get("modality") == "latents":
        options["autoencoder"] = str(request.getfixturevalue("tiny_autoencoder_dir"))
    m = TarFlow(tiny_config(**options)).double()
    return randomise(m).eval()


def make_inputs(model: TarFlow, batch: int = BATCH, seed: int = 1):
    """Images in [-1, 1] (float64) and labels (including the null class) when the model takes them."""
    gen = torch.Generator().manual_seed(seed)
    c = model.config
    x = torch.rand(batch, c.channels, c.image_size, c.image_size, generator=gen, dtype=torch.float64) * 2 - 1
    y = None
    if c.num_classes:
        y = torch.arange(batch) % (c.num_classes + 1)  # 0, 1, 2, (3 = null), ...
    return x, y


def make_labels(model: TarFlow, batch: int = BATCH):
    """Real class labels (no null class) for a conditional model, else None."""
    if not model.config.num_classes:
        return None
    return torch.arange(batch) % model.config.num_classes


@pytest.fixture
def inputs(model):
    return make_inputs(model)


def write_llama_directory(path, family: str = "llama", hidden: int = 32, layers: int = 2, heads: int = 4,
                          kv_heads: int = 2, seed: int = 0, vocab_size: int = 50, **options):
    """A Hugging Face causal-LM directory (config.json + model.safetensors of random weights, std 0.1, norm gains
    about 1: the layers, the token embedding and the head) of the Llama family, written without transformers;
    returns its path as text."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from tarflow.nn.llama import LAYER_PREFIX, LlamaSpec, llama_layers

    config = {"model_type": family, "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": kv_heads, "intermediate_size": 2 * hidden, "hidden_act": "silu",
              "rms_norm_eps": 1e-6, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}, **options}
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    generator = torch.Generator().manual_seed(seed)
    stack = llama_layers(LlamaSpec.from_json(json.dumps(config), 64), 64)
    tensors = {}
    for name, parameter in stack.state_dict().items():
        noise = torch.randn(parameter.shape, generator=generator) * 0.1
        tensors[LAYER_PREFIX + name] = (1 + noise) if name.endswith("norm.weight") else noise
    tensors["model.embed_tokens.weight"] = torch.randn(vocab_size, hidden, generator=generator) * 0.1
    tensors["lm_head.weight"] = torch.randn(vocab_size, hidden, generator=generator) * 0.1
    save_file(tensors, str(path / "model.safetensors"))
    return str(path)
