"""`tarflow demo`: a small local web app (Gradio, the optional extra ``tarflow[demo]``) on 127.0.0.1 to sample from
a model (label, guidance, temperature, sampler, seed) and to score an uploaded image's bits/dim.

The model side (`Demo.sample`, `Demo.score`) does not need Gradio; `build_app` wraps it in a page whose two
functions are also an HTTP API (``/sample`` and ``/score``, e.g. with gradio_client).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from ..errors import ConfigError, InputError
from .options import DEVICE_HELP, SAMPLERS, number

HOST = "127.0.0.1"
CYCLE, NULL = "each class in turn", "null (unconditional)"
# `tarflow sample` without denoising flags: iterative for noise-conditioned models, Tweedie for gaussian-noise ones
MODEL_DEFAULT_DENOISING = argparse.Namespace(denoise=None, denoise_steps=None, dynamics=None, denoise_clip=False)


class Demo:
    """A loaded model with the two things the page does."""

    def __init__(self, path: str, device: str = "auto"):
        from ..runs import load_model

        self.model, self.model_dir = load_model(path, device)
        self.levels = int(self.model.metadata.get("levels", 256))
        self.num_classes = self.model.config.num_classes
        self.stored = self.model.metadata.get("sampling", {})  # the page starts from the model's stored settings

    def label_choices(self) -> list[str]:
        return [CYCLE, *map(str, range(self.num_classes)), NULL] if self.num_classes else [NULL]

    def sample(self, label: str, guidance: float, temperature: float, sampler: str, seed: int, count: int
               ) -> tuple[np.ndarray, str]:
        """A grid of ``count`` samples (H, W, C) uint8 and a line saying how it was drawn."""
        import torch

        from ..sampling import DenoisedSampler, Guidance
        from ..sampling.guidance import default_rule
        from ..viz import grid_image, to_uint8
        from .sample import choose_denoiser, choose_sampler, sample_labels

        if not temperature > 0 or guidance < 0 or count < 1 or seed < 0:
            raise InputError("temperature must be > 0, guidance >= 0, count >= 1 and seed >= 0")
        count, seed = int(count), int(seed)
        wanted = None if label == CYCLE or not self.num_classes else "null" if label == NULL else int(label)
        labels = sample_labels(self.num_classes, wanted, count)
        rule = self.stored.get("guidance_rule") or default_rule(self.model.config)
        guided = Guidance(guidance, rule) if guidance else None
        chosen, how = choose_sampler(self.model, self.model_dir, sampler, count, guided)
        denoiser, sigma, denoised = choose_denoiser(self.model, MODEL_DEFAULT_DENOISING)
        if denoiser is not None:
            chosen = DenoisedSampler(chosen, denoiser)
        x = chosen.sample(count, labels, temperature, guided, sigma, generator=torch.Generator().manual_seed(seed))
        grid = grid_image(to_uint8(x, self.levels), nrow=min(count, self.num_classes or 10))
        return np.asarray(grid.convert("RGB")), f"{count} samples, seed {seed}, {how}, denoise {denoised}"

    def score(self, image, label: str) -> str:
        """Bits/dim of an uploaded image (a PIL image), centre-cropped and resized to the model's size and
        quantized to its levels: under p(x) (the class mixture for a conditional model) and p(x | label)."""
        import torch

        from ..data.images import BadImage, center_square, to_mode
        from ..metrics import evaluate_bpd, score_bpd

        if image is None:
            raise InputError("upload an image to score")
        config = self.model.config
        if config.noise_conditioning:
            raise InputError("this model is noise-conditioned (iTARFlow): it has no exact likelihood of clean images; "
                             "`tarflow eval RUN --noise-level t` measures bits/dim of noisy data")
        try:
            pixels = np.asarray(center_square(to_mode(image, config.channels), config.image_size), dtype=np.float64)
        except BadImage as e:
            raise InputError(f"the image cannot be scored: {e}") from None
        levels = np.round(pixels * (self.levels - 1) / 255).astype(np.uint8)  # 8-bit values -> the model's levels
        images = torch.from_numpy(levels[None] if levels.ndim == 2 else levels.transpose(2, 0, 1))[None]
        lines = [f"bits/dim under p(x): {score_bpd(self.model, images, self.levels)[0].item():.4f}"
                 + (" (the class mixture)" if self.num_classes else "")]
        if self.num_classes and label not in (CYCLE, NULL):
            given = evaluate_bpd(self.model, images, torch.tensor([int(label)]), self.levels)["bits_per_dim"]
            lines.append(f"bits/dim under p(x | y={label}): {given:.4f}")
        return "\n".join(lines + [f"({config.channels}x{config.image_size}x{config.image_size}, {self.levels} levels, "
                                  f"uniform dequantization, seed 0)"])


def import_gradio():
    """The gradio module, or a ConfigError naming the extra to install."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the page works offline; no usage reports
    try:
        import gradio
    except ImportError:
        raise ConfigError("tarflow demo needs Gradio: pip install 'tarflow[demo]' (or pip install gradio)") from None
    return gradio


def build_app(demo: Demo):
    """The Gradio page: a Sample tab and a Score tab."""
    gr = import_gradio()
    with gr.Blocks(title=f"tarflow demo: {demo.model_dir}") as app:
        gr.Markdown(f"## tarflow demo\n`{demo.model_dir}`")
        with gr.Tab("Sample"):
            with gr.Row():
                label = gr.Dropdown(demo.label_choices(), value=demo.label_choices()[0], label="label")
                sampler = gr.Dropdown(list(SAMPLERS), value="sequential", label="sampler")
                seed = gr.Number(0, precision=0, minimum=0, label="seed")
            with gr.Row():
                guidance = gr.Slider(0, 5, demo.stored.get("guidance", 0.0), step=0.1, label="guidance weight (0: none)")
                temperature = gr.Slider(0.1, 1.5, demo.stored.get("temperature", 1.0), step=0.05, label="temperature")
                count = gr.Slider(1, 100, 20, step=1, label="samples")
            button = gr.Button("Sample", variant="primary")
            grid = gr.Image(label="samples", type="numpy", format="png")  # lossless, unlike the default webp
            how = gr.Textbox(label="how", interactive=False)
            button.click(demo.sample, [label, guidance, temperature, sampler, seed, count], [grid, how],
                         api_name="sample")
        with gr.Tab("Score"):
            image = gr.Image(label="image", type="pil")
            given = gr.Dropdown(demo.label_choices(), value=demo.label_choices()[0], label="label for p(x | y)")
            scored = gr.Textbox(label="bits/dim", interactive=False)
            gr.Button("Score", variant="primary").click(demo.score, [image, given], scored, api_name="score")
    return app


def launch(app, port: int) -> None:
    """Serve ``app`` on 127.0.0.1:``port`` until interrupted."""
    app.launch(server_name=HOST, server_port=port, inbrowser=False, share=False, show_error=True)


def cmd_demo(args: argparse.Namespace) -> int:
    if args.port > 65535:
        raise ConfigError(f"--port must be a TCP port, 1..65535, got {args.port}")
    import_gradio()  # before the model is loaded
    app = build_app(Demo(args.path, args.device))
    print(f"tarflow demo of {args.path} on http://{HOST}:{args.port} (Ctrl-C stops it)", file=sys.stderr)
    launch(app, args.port)
    return 0


def add_demo_parser(sub) -> None:
    parser = sub.add_parser("demo", help="a local web app to sample from a model and score images (needs gradio)",
                            description="Start a small web app on 127.0.0.1 (Gradio; pip install 'tarflow[demo]') "
                            "to sample with label, guidance, temperature, sampler and seed, and to score an uploaded "
                            "image's bits/dim. Its functions are also an HTTP API (/sample, /score).")
    parser.add_argument("path", metavar="RUN_OR_MODEL_DIR")
    parser.add_argument("--port", type=number(int, minimum=1), default=7860, help="port on 127.0.0.1 (default 7860)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.set_defaults(func=cmd_demo)
