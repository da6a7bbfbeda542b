"""Named run configs. `tarflow train --preset NAME` starts from one; any field can be overridden."""

from __future__ import annotations

from .errors import ConfigError
from .train.config import RunConfig

PRESETS: dict[str, dict] = {
    # The default: class-conditional TarFlow on scikit-learn's 8x8 digits, a few minutes on 2 CPU cores.
    "digits": {
        "model": dict(image_size=8, channels=1, patch_size=2, width=128, num_blocks=4, layers_per_block=2,
                      head_dim=32, num_classes=10),
        "train": dict(dataset="digits", steps=1200, batch_size=64, lr=2e-3, warmup_steps=100, eval_every=300,
                      sample_every=300, checkpoint_every=300, sample_guidance=1.0, sample_temperature=0.9),
    },
    # MNIST 28x28 on 2 CPU cores in about an hour (the reference code's MNIST shape: patch 4, width 128,
    # 4 blocks x 4 layers). Uniform dequantization, so test bits/dim are comparable with published ones.
    "mnist": {
        "model": dict(image_size=28, channels=1, patch_size=4, width=128, num_blocks=4, layers_per_block=4,
                      head_dim=64, num_classes=10),
        "train": dict(dataset="mnist", steps=2400, batch_size=128, lr=1e-3, warmup_steps=200, eval_every=400,
                      sample_every=400, checkpoint_every=200, sample_guidance=1.0, sample_temperature=0.9),
    },
    # MNIST for samples a person recognises (issue 21): the mnist preset's model and budget (2,400 steps), trained
    # on images with Gaussian noise (sigma 0.5 in [-1, 1] units; one Tweedie step removes it at sampling) and
    # sampled at guidance 4 (STARFlow's rule) and temperature 0.5. sigma and the setting are the best of 800-step
    # runs at sigma 0.05 / 0.1 / 0.2 / 0.3 / 0.5 (class consistency 0.34 / 0.43 / 0.57 / 0.67 / 0.79 at w = 4,
    # T = 1; 0.92 at sigma 0.5, w = 4, T = 0.5; README). Its test bits/dim (uniform dequantization) are not
    # comparable with the mnist preset's: that one is for likelihoods.
    "mnist-samples": {
        "model": dict(image_size=28, channels=1, patch_size=4, width=128, num_blocks=4, layers_per_block=4,
                      head_dim=64, num_classes=10),
        "train": dict(dataset="mnist", noise="gaussian", noise_std=0.5, steps=2400, batch_size=128, lr=1e-3,
                      warmup_steps=200, eval_every=400, sample_every=400, checkpoint_every=200, sample_guidance=4.0,
                      sample_guidance_rule="starflow", sample_temperature=0.5),
    },
    # CIFAR-10 32x32 on 2 CPU cores in about an hour: what an hour buys, not a competitive number.
    "cifar10": {
        "model": dict(image_size=32, channels=3, patch_size=4, width=192, num_blocks=4, layers_per_block=3,
                      head_dim=64, num_classes=10),
        "train": dict(dataset="cifar10", steps=2800, batch_size=64, lr=1e-3, warmup_steps=200, flip=True,
                      eval_every=700, sample_every=350, checkpoint_every=350, eval_draws=1),
    },
    # CIFAR-10 for samples (issue 21): the cifar10 preset's model and budget, trained on images with Gaussian noise
    # sigma 0.05 (one Tweedie step removes it at sampling) and sampled at guidance 2 (TarFlow's rule), temperature
    # 0.9. sigma is the best FID of 700-step runs at sigma 0.05 / 0.1 / 0.2 / 0.3 (FID of 500 samples 244.9 /
    # 250.2 / 254.9 / 260.6 at w = 0, T = 1), the setting the best of the sigma 0.1 run's grid (README).
    "cifar10-samples": {
        "model": dict(image_size=32, channels=3, patch_size=4, width=192, num_blocks=4, layers_per_block=3,
                      head_dim=64, num_classes=10),
        "train": dict(dataset="cifar10", noise="gaussian", noise_std=0.05, steps=2800, batch_size=64, lr=1e-3,
                      warmup_steps=200, flip=True, eval_every=700, sample_every=350, checkpoint_every=350,
                      eval_draws=1, sample_guidance=2.0, sample_guidance_rule="tarflow", sample_temperature=0.9),
    },
    # Single-GPU recipes after the TarFlow paper's (patch 2, 8 blocks x 8 layers, width 768 at 64 px;
    # bf16 autocast, lr 1e-4). Not yet run by us: see the README's results for what has been measured.
    "mnist-gpu": {
        "model": dict(image_size=28, channels=1, patch_size=2, width=512, num_blocks=8, layers_per_block=4,
                      head_dim=64, num_classes=10),
        "train": dict(dataset="mnist", steps=100_000, batch_size=256, lr=1e-4, warmup_steps=1000,
                      eval_every=5000, sample_every=5000, checkpoint_every=2000, eval_draws=4),
    },
    "cifar10-gpu": {
        "model": dict(image_size=32, channels=3, patch_size=2, width=768, num_blocks=8, layers_per_block=8,
                      head_dim=64, num_classes=10),
        "train": dict(dataset="cifar10", steps=200_000, batch_size=256, lr=1e-4, warmup_steps=1000, flip=True,
                      eval_every=10_000, sample_every=5000, checkpoint_every=2000, eval_draws=4),
    },
    # iTARFlow (noise levels t in [0.01, 0.3], loss weight t, samples generated at t = 0.3 then iteratively
    # denoised): the digits preset's model with a noise-level input, for CPU smoke runs. Not yet measured.
    "digits-itarflow": {
        "model": dict(image_size=8, channels=1, patch_size=2, width=128, num_blocks=4, layers_per_block=2,
                      head_dim=32, num_classes=10, noise_conditioning=True),
        "train": dict(dataset="digits", steps=1200, batch_size=64, lr=2e-3, warmup_steps=100, eval_every=300,
                      sample_every=300, checkpoint_every=300, sample_guidance=1.0, sample_temperature=0.9),
    },
    # The cifar10 preset's model and hour of 2 CPU cores, noise-conditioned: to compare one-step Tweedie with
    # iterative denoising at 5 / 10 / 20 steps against the fixed-noise cifar10 model. Not yet run.
    "cifar10-itarflow": {
        "model": dict(image_size=32, channels=3, patch_size=4, width=192, num_blocks=4, layers_per_block=3,
                      head_dim=64, num_classes=10, noise_conditioning=True),
        "train": dict(dataset="cifar10", steps=2800, batch_size=64, lr=1e-3, warmup_steps=200, flip=True,
                      eval_every=700, sample_every=350, checkpoint_every=350, eval_draws=1),
    },
    # STARFlow on CIFAR-10 in the latent space of `tarflow autoencoder train --dataset cifar10` (its default run
    # directory, x4: 4x8x8 latents). Deep-shallow stack (the class on the deep block only), patch 1, noise 0.3 on
    # unit-variance latents, softplus scale with a soft clip of 4, learned start token, RoPE; samples use STARFlow's
    # guidance rule. Meant for an hour on 2 CPU cores; its run (2026-12-03) took 73 min: test latent nats/dim
    # 0.8130, FID 95.5 (Tweedie) / 102.4 (fine-tuned decoder), but samples no faster than the pixel preset's.
    "cifar10-latent": {
        "model": dict(modality="latents", autoencoder="runs/autoencoder-cifar10", image_size=8, channels=4,
                      patch_size=1, width=192, num_blocks=6, layers_per_block=[1, 1, 1, 1, 1, 7], head_dim=64,
                      num_classes=10, condition_top_only=True, start_token="learned", positions="rope",
                      scale="softplus", log_scale_clip=4.0),
        "train": dict(dataset="cifar10", noise="gaussian", noise_std=0.3, steps=2800, batch_size=64, lr=1e-3,
                      warmup_steps=200, eval_every=700, sample_every=700, checkpoint_every=350,
                      sample_guidance=1.0),
    },
    # cifar10-latent with patch 2 on the 8x8 latents: 16 tokens of 16 numbers instead of 64 of 4, so a sample takes
    # 16 sequential steps per block instead of 64 (cifar10-latent's flow alone cost 1.03x the pixel preset's time).
    # A step costs 0.31x cifar10-latent's at batch 64 and 0.55x the pixel cifar10 preset's at batch 128
    # (`python benchmarks/preset_step_cost.py cifar10-latent cifar10-latent-patch2 --batch 64 128 256 --threads 2`),
    # so 4,800 steps of 128. Its run (2026-12-03): 59 min 32 s, test latent nats/dim 0.8243, FID 104.2 (Tweedie) /
    # 106.3 (fine-tuned decoder), samples in 0.29-0.40x the pixel preset's time (README, Latent flows).
    "cifar10-latent-patch2": {
        "model": dict(modality="latents", autoencoder="runs/autoencoder-cifar10", image_size=8, channels=4,
                      patch_size=2, width=192, num_blocks=6, layers_per_block=[1, 1, 1, 1, 1, 7], head_dim=64,
                      num_classes=10, condition_top_only=True, start_token="learned", positions="rope",
                      scale="softplus", log_scale_clip=4.0),
        "train": dict(dataset="cifar10", noise="gaussian", noise_std=0.3, steps=4800, batch_size=128, lr=1e-3,
                      warmup_steps=200, eval_every=1200, sample_every=1200, checkpoint_every=400,
                      sample_guidance=1.0),
    },
    # After the STARFlow paper's ImageNet 256 recipe on SD-VAE latents (4x32x32): layers 2 2 2 2 2 24, patch 1,
    # noise 0.3, softplus scale, soft clip 4, learned start, RoPE, class on the deep block (width 1536 is our
    # choice, not the paper's). Give the VAE directory (e.g. a local copy of stabilityai/sd-vae-ft-ema) with
    # --autoencoder and ImageNet's train/ and test/ class folders with --data-dir. Not yet run by us (GPUs).
    "imagenet256-latent-gpu": {
        "model": dict(modality="latents", autoencoder="sd-vae-ft-ema", image_size=32, channels=4, patch_size=1,
                      width=1536, num_blocks=6, layers_per_block=[2, 2, 2, 2, 2, 24], head_dim=64,
                      num_classes=1000, condition_top_only=True, start_token="learned", positions="rope",
                      scale="softplus", log_scale_clip=4.0),
        "train": dict(dataset="folder", noise="gaussian", noise_std=0.3, steps=1_000_000, batch_size=256, lr=1e-4,
                      warmup_steps=10_000, eval_every=20_000, sample_every=10_000, checkpoint_every=5000,
                      sample_guidance=2.0, amp="bf16"),
    },
    # TarFlowLM on tinyshakespeare (character level), one hour on 2 CPU cores: 6,000 steps at 0.55 s a step (2 idle
    # cores, 2 threads, measured over 20 steps) plus evaluations. Mix-d couplings of 16 components (more fit better in
    # a smoke test, but the output projections grow by 17 per component and width and the baseline's parameter count
    # is matched within 10%), 4 alternating blocks x 2 layers, width 128, windows of 128 characters. Test bits/char is
    # the ELBO bound (`tarflow eval RUN`).
    "shakespeare": {
        "model": dict(modality="text", context=128, chars_per_token=1, embed_dim=8, width=128, num_blocks=4,
                      layers_per_block=2, head_dim=32, transform="mixture-d", mixture_components=16, num_classes=0),
        "train": dict(dataset="shakespeare", steps=6000, batch_size=32, lr=1e-3, warmup_steps=100, eval_every=1000,
                      sample_every=1000, checkpoint_every=500, sample_temperature=0.8),
    },
    # The discrete baseline of the same width and depth (8 layers), data and budget (one hour: 8,000 steps at 0.43 s a
    # step, measured as the flow's): the exact bits/char.
    "shakespeare-ar": {
        "model": dict(modality="text", architecture="autoregressive", context=128, width=128, num_blocks=4,
                      layers_per_block=2, head_dim=32, num_classes=0),
        "train": dict(dataset="shakespeare", steps=8000, batch_size=32, lr=1e-3, warmup_steps=100, eval_every=1000,
                      sample_every=1000, checkpoint_every=500, sample_temperature=0.8),
    },
    # Normalizing Trajectory Model on 8x8 digits (K = 4 steps, cosine signal schedule): a shallow transporter of
    # 2 alternating blocks x 1 layer and a 4-layer predictor shared by every step; meant as a smoke run of minutes on
    # 2 CPU cores (a full run not yet measured). Test bits/dim is the trajectory bound's (an upper bound).
    "digits-ntm": {
        "model": dict(architecture="ntm", image_size=8, channels=1, patch_size=2, width=64, num_blocks=2,
                      layers_per_block=1, head_dim=32, start_token="learned", predictor_layers=4, trajectory_steps=4,
                      num_classes=10),
        "train": dict(dataset="digits", steps=600, batch_size=64, lr=2e-3, warmup_steps=50, eval_every=200,
                      sample_every=200, checkpoint_every=200, sample_guidance=1.0, entropy_every=0),
    },
    # MNIST 28x28 (patch 4) as an NTM (2 x 2 transporter layers and 6 predictor layers on K B = 4 x 64 rows). One
    # step costs 1.67x the cifar10 preset's (`python benchmarks/preset_step_cost.py mnist-ntm mnist --threads 2`,
    # cores otherwise idle, 2026-12-02; cifar10-ntm 0.94x in the same way, about what its run took), so 1,600 steps
    # fit cifar10's hour of 2,800 (1,675 would). Its run (2026-12-02, on a faster machine than that estimate's): 46 min
    # 47 s of steps, test bits/dim bound 2.934, FID 175.6 (docs/ntm.md).
    "mnist-ntm": {
        "model": dict(architecture="ntm", image_size=28, channels=1, patch_size=4, width=128, num_blocks=2,
                      layers_per_block=2, head_dim=64, start_token="learned", predictor_layers=6, trajectory_steps=4,
                      num_classes=10),
        "train": dict(dataset="mnist", steps=1600, batch_size=64, lr=1e-3, warmup_steps=200, eval_every=400,
                      sample_every=400, checkpoint_every=200, sample_guidance=1.0, entropy_every=0),
    },
    # CIFAR-10 32x32 (patch 4) as an NTM: mnist-ntm's shape (2 x 2 transporter layers, 6 predictor layers, width
    # 128) on batches of 32. One step costs 0.86x the cifar10 preset's (`python benchmarks/preset_step_cost.py
    # cifar10-ntm --batch 32 64`, 2026-12-02, beside two runs), so 3,200 steps are meant as about an hour on 2 CPU
    # cores; batch 64 cost 2.9x (3.4x batch 32's), so it is not used. The full run took a median 1.64 s per step alone
    # (about 1 h 28 min; docs/ntm.md) on a machine where the cifar10 step itself took 1.46-1.78 s, not the 1.19 s of
    # its hour: measured alone, cifar10-ntm is 0.94x the cifar10 step, so on cifar10's machine the
    # 3,200 steps come to about 0.94 x 1.19 s x 3,200 = 60 min (an estimate, not run there).
    "cifar10-ntm": {
        "model": dict(architecture="ntm", image_size=32, channels=3, patch_size=4, width=128, num_blocks=2,
                      layers_per_block=2, head_dim=64, start_token="learned", predictor_layers=6, trajectory_steps=4,
                      num_classes=10),
        "train": dict(dataset="cifar10", steps=3200, batch_size=32, lr=1e-3, warmup_steps=200, flip=True,
                      eval_every=800, sample_every=400, checkpoint_every=400, sample_guidance=1.0, entropy_every=0,
                      eval_draws=1),
    },
    # Text-to-image (docs/text_to_image.md): the mnist-samples preset's model, noise and guidance, conditioned on
    # captions made from the labels ("a handwritten seven", "the digit 7", ...) through a text encoder trained with the
    # flow from scratch, as a causal prefix of the last block. Not yet measured.
    "mnist-text": {
        "model": dict(image_size=28, channels=1, patch_size=4, width=128, num_blocks=4, layers_per_block=4,
                      head_dim=64, num_classes=10, text_encoder="learned", captions="digits", caption_length=6),
        "train": dict(dataset="mnist", noise="gaussian", noise_std=0.5, steps=2400, batch_size=128, lr=1e-3,
                      warmup_steps=200, eval_every=400, sample_every=400, checkpoint_every=200, sample_guidance=4.0,
                      sample_guidance_rule="starflow", sample_temperature=0.5),
    },
    # The text-to-image pipeline on 8x8 digits in a few minutes on a CPU, for smoke runs. Not yet measured.
    "digits-text": {
        "model": dict(image_size=8, channels=1, patch_size=2, width=64, num_blocks=4, layers_per_block=2,
                      head_dim=32, num_classes=10, text_encoder="learned", captions="digits", caption_length=6),
        "train": dict(dataset="digits", steps=600, batch_size=64, lr=2e-3, warmup_steps=50, eval_every=300,
                      sample_every=300, checkpoint_every=300, sample_guidance=2.0, sample_temperature=0.9),
    },
    # STARFlow-V on Moving MNIST (2 digits, 64x64, 10 frames) in pixels, the hour on 2 cores from nothing
    # (60 min, 2026-12-05): samples of digits that move, and test bits/dim per frame of a density of clips blurred by
    # the training noise (a loose bound; moving-mnist-likelihood is the preset for likelihoods). The
    # moving-mnist-samples model conditioned on the clip's digit pair (55 classes, in the deep block; a tenth of the
    # labels dropped for guidance), with the latent preset's factorised positions, reverse time and 6,000 clips;
    # 4,000 steps of 16 clips at lr 2e-3 (at 1e-3 the first and last frames showed the drawn pair half as often).
    # Sampled as mnist-samples is (guidance 4, STARFlow's rule) with the first frame at temperature 0.5 and the later
    # ones at 0.7 (at lr 1e-3, 0.5 throughout faded the digits to empty frames; docs/video.md#digits-in-pixels).
    # Named moving-mnist-digits until 2026-12-05 (moving-mnist was then the likelihood preset).
    "moving-mnist": {
        "model": dict(modality="video", frame_count=10, image_size=64, channels=1, patch_size=8, width=128,
                      num_blocks=4, layers_per_block=[1, 1, 1, 4], head_dim=64, frame_layout="global-local",
                      num_classes=55, positions="factorised"),
        "train": dict(dataset="moving-mnist", noise="gaussian", noise_std=0.5, clip_count=6000, reverse_time=True,
                      steps=4000, batch_size=16, lr=2e-3, warmup_steps=100, eval_every=0, sample_every=500,
                      checkpoint_every=250, num_samples=8, entropy_every=0, sample_guidance=4.0,
                      sample_guidance_rule="starflow", sample_temperature=0.7, sample_first_frame_temperature=0.5),
    },
    # Moving MNIST for likelihoods (uniform dequantization, as mnist), cut to fit about an hour of 2 CPU cores: 10
    # frames (not 20), patch 8 (64 tokens per frame, 640 per clip), 2,000 generated clips per split; three shallow
    # blocks within each frame and a deep block of 4 layers causal over frames. 2,200 steps: its matmul FLOPs per
    # step are 1.07x the mnist preset's (2,400 steps in about an hour), counted by hand; measured: 2.0 s a step on
    # one core (73 min), 1.32-1.35 steps/s on two (about 28 min; 200 steps timed, 2026-12-05).
    "moving-mnist-likelihood": {
        "model": dict(modality="video", frame_count=10, image_size=64, channels=1, patch_size=8, width=128,
                      num_blocks=4, layers_per_block=[1, 1, 1, 4], head_dim=64, frame_layout="global-local"),
        "train": dict(dataset="moving-mnist", clip_count=2000, steps=2200, batch_size=16, lr=1e-3, warmup_steps=100,
                      eval_every=0, sample_every=500, checkpoint_every=250, num_samples=8, entropy_every=0),
    },
    # Moving MNIST for samples, unconditional: the moving-mnist-likelihood model and budget trained on clips with
    # Gaussian noise sigma 0.5 (one Tweedie step, or a fitted flow-score-matching denoiser, removes it), the noise
    # the mnist-samples preset found best for MNIST digits. Sampled at temperature 1: its full run (2026-12-03,
    # docs/video.md) drew nearly empty frames at mnist-samples' 0.5 (an unconditional model, no guidance) and stroke
    # fragments, not yet digits, at 1.
    "moving-mnist-samples": {
        "model": dict(modality="video", frame_count=10, image_size=64, channels=1, patch_size=8, width=128,
                      num_blocks=4, layers_per_block=[1, 1, 1, 4], head_dim=64, frame_layout="global-local"),
        "train": dict(dataset="moving-mnist", noise="gaussian", noise_std=0.5, clip_count=2000, steps=2200,
                      batch_size=16, lr=1e-3, warmup_steps=100, eval_every=0, sample_every=500, checkpoint_every=250,
                      num_samples=8, entropy_every=0),
    },
    # Moving MNIST in latent frames (STARFlow-V's latent space), for samples: every 64x64 frame encoded by the
    # autoencoder of `tarflow autoencoder train --dataset mnist` (its default run directory, x4: 4x16x16 latents),
    # patch 4, so 16 tokens of 64 numbers per frame, a quarter of the pixel preset's sequence; Gaussian noise 0.3 on
    # unit-variance latents (as cifar10-latent). Conditioned on the clip's digit pair (55 classes, in the deep block)
    # and sampled with guidance 2 (STARFlow's rule) at temperature 0.5; three shallow blocks within each frame and
    # a deep block of 6 layers over frames; factorised positions (place + frame) and half the clips played backwards.
    # 24,000 steps of 16 clips drawn from 6,000: 106 min on 2 cores (2026-12-04), an upper bound. Training longer
    # is what made samples keep their digits: docs/video.md#latent-frames has the runs that chose it.
    "moving-mnist-latent": {
        "model": dict(modality="video", autoencoder="runs/autoencoder-mnist", frame_count=10, image_size=16,
                      channels=4, patch_size=4, width=128, num_blocks=4, layers_per_block=[1, 1, 1, 6], head_dim=64,
                      frame_layout="global-local", num_classes=55, positions="factorised"),
        "train": dict(dataset="moving-mnist", noise="gaussian", noise_std=0.3, clip_count=6000, reverse_time=True,
                      steps=24000, batch_size=16, lr=1e-3, warmup_steps=100, eval_every=0, sample_every=1000,
                      checkpoint_every=250, num_samples=8, entropy_every=0, sample_guidance=2.0,
                      sample_guidance_rule="starflow", sample_temperature=0.5),
    },
    # Seconds on a CPU: the moving-mnist pipeline on 4 frames of 32x32 (16 tokens each), for smoke tests.
    "moving-mnist-tiny": {
        "model": dict(modality="video", frame_count=4, image_size=32, channels=1, patch_size=8, width=32,
                      num_blocks=2, layers_per_block=1, head_dim=16, frame_layout="global-local"),
        "train": dict(dataset="moving-mnist", clip_count=64, steps=20, batch_size=8, lr=2e-3, warmup_steps=5,
                      log_every=10, eval_every=0, sample_every=0, checkpoint_every=0, num_samples=4,
                      entropy_every=0),
    },
    # STARFlow2 (issue 18) at small scale: the pretzel model on interleaved MNIST sequences (words and 28x28 images
    # of 49 patch-4 tokens): 3 shallow blocks x 2 layers within each image and 6 joint layers of two streams (language
    # model, flow), width 128; gaussian noise 0.5 as mnist-samples, samples denoised by one Tweedie step. 2,400 steps
    # of 64 sequences: one step took 1.9 s on one core with one thread (76 minutes for the run), so meant as about an
    # hour on 2 cores; not yet measured by a full run.
    "interleaved-mnist": {
        "model": dict(architecture="pretzel", image_size=28, channels=1, patch_size=4, width=128, num_blocks=4,
                      layers_per_block=[2, 2, 2, 6], head_dim=64, context=112),
        "train": dict(dataset="mnist", noise="gaussian", noise_std=0.5, steps=2400, batch_size=64, lr=1e-3,
                      warmup_steps=200, eval_every=400, sample_every=400, checkpoint_every=200, entropy_every=0),
    },
    # Seconds on a CPU: for smoke tests of the whole pipeline, not for results.
    "tiny": {
        "model": dict(image_size=8, channels=1, patch_size=2, width=32, num_blocks=2, layers_per_block=1,
                      head_dim=16, num_classes=10),
        "train": dict(dataset="digits", steps=40, batch_size=64, lr=2e-3, warmup_steps=5, log_every=10,
                      eval_every=20, sample_every=20, checkpoint_every=20, num_samples=20),
    },
}

DEFAULT_PRESET = "digits"


RENAMED = {"moving-mnist-digits": "moving-mnist"}  # old name -> new name, so that old commands fail clearly


def get_preset(name: str) -> RunConfig:
    if name in RENAMED:
        raise ConfigError(f"preset {name!r} is now called {RENAMED[name]!r}: use --preset {RENAMED[name]}")
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available presets: {', '.join(PRESETS)}")
    return RunConfig.from_dict(PRESETS[name])
