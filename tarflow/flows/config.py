"""The architecture of a flow model: everything needed to rebuild it, saved in its ``config.json``.

Groups of fields: the modality (data <-> tokens), the block stack (layers, orders, conditioning), the
per-token transform and the prior, and the Transformer inside each block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..configs import check_choices, option
from ..errors import ConfigError
from ..modalities import MODALITIES, build_modality, models_latents
from ..nn.llama import LlamaSpec, read_config_text
from .captions import CAPTION_SETS, caption_vocabulary, phrasings, words_of
from .orders import ORDERS
from .priors import PRIORS

TRANSFORM_NAMES = ("affine", "additive", "mixture", "mixture-d")
ARCHITECTURES = ("flow", "autoregressive", "ntm", "pretzel")
PRETZEL_WORDS = ("<bos>", "<eos>", "<image>")  # the words a pretzel model reads and writes itself


@dataclass
class FlowConfig:
    # ----- modality: data <-> tokens (B, T, D)
    modality: str = option("pixels", "what the data is: pixels (images patchified into tokens), latents (the "
                           "latent grid of a frozen autoencoder, STARFlow) or text (token ids as learned Gaussian "
                           "vectors, TarFlowLM) or video (clips, each frame patchified, tokens frame-major, STARFlow-V)",
                           choices=MODALITIES)
    image_size: int = option(8, "image height and width in pixels (square images); latents (and video through an "
                             "autoencoder): the latent grid's side")
    channels: int = option(1, "image channels (1 grey, 3 RGB); latents (and video through an autoencoder): the "
                           "autoencoder's latent channels")
    patch_size: int = option(2, "patch side p; tokens are p x p x channels, T = (size/p)^2")
    frame_count: int = option(1, "video: frames F per clip; T = F (size/p)^2 tokens, frame-major")
    frame_layout: str = option("global-local", "video: global-local (every block but the last acts within each "
                               "frame, frames folded into the batch; the last block, nearest the prior, is causal over "
                               "the whole frame-major sequence, STARFlow-V), global-first (the same with the block over "
                               "the sequence first, nearest the data, so it reads earlier frames as they are) or causal "
                               "(every block over the whole sequence, causal over frames)",
                               choices=("global-local", "global-first", "causal"))
    autoencoder: str = option("", "latents, and video frames: directory of the frozen autoencoder (a `tarflow "
                              "autoencoder train` run, or a diffusers AutoencoderKL); a relative path is read from the "
                              "flow model's directory. A video model given one models each frame's latents")
    latent_scale: float = option(0.0, "latents: z = (encode(x) - latent_shift) * latent_scale; 0: measured on the "
                                 "training data (1 / std) when training starts")
    latent_shift: float = option(0.0, "latents: the mean subtracted before scaling (measured with latent_scale)")
    tokenizer: str = option("char", "text: char (one id per character of the vocabulary) or byte (the 256 byte values "
                            "of UTF-8)", choices=("char", "byte"))
    vocabulary: str = option("", "text, char tokenizer: the characters, in id order (set from the training text)")
    context: int = option(256, "text: characters (or bytes) per example window; pretzel: positions of the longest "
                          "interleaved sequence (its position table)")
    chars_per_token: int = option(1, "text: characters k grouped into one flow token (patch), T = context / k")
    embed_dim: int = option(8, "text: dimensions e of each character's vector; a flow token has k e")
    architecture: str = option("flow", "flow (TarFlow; TarFlowLM for text), autoregressive (text: a discrete causal "
                               "Transformer over the ids with num_blocks x layers_per_block layers, the baseline), "
                               "ntm (pixels: a Normalizing Trajectory Model, each reverse step of a noising "
                               "trajectory of trajectory_steps steps a shallow conditional flow, see docs/ntm.md) or "
                               "pretzel (pixels: STARFlow2, one causal model of interleaved words and images, a "
                               "language-model stream beside a flow stream, see tarflow/flows/pretzel.py)",
                               choices=ARCHITECTURES)
    words: str = option("", "pretzel: the words of its vocabulary in id order, space-separated (set by training from "
                        "tarflow.data.interleaved.WORDS); must hold <bos>, <eos> and <image>")
    language_model: str = option("", "pretzel: a local Hugging Face causal-LM directory of the Llama family (Llama, "
                                 "Mistral, Qwen2, Qwen3, SmolLM) whose decoder layers, with their weights, are the "
                                 "language-model stream (trained on with the rest; the word embedding and head stay "
                                 "ours); width and the last layers_per_block must be its hidden size and layer count. "
                                 "Empty: layers of our own")
    language_model_config: str = option("", "pretzel: the language_model directory's config.json, as text (set from "
                                        "the directory, so a saved model loads without it)")
    # ----- the stack of flow blocks
    num_blocks: int = option(4, "number of autoregressive flow blocks (N)")
    layers_per_block: int | list[int] = option(2, "Transformer layers in each flow block: one number for every "
                                               "block, or one per block in block order (the last block is nearest "
                                               "the prior), e.g. 2,2,2,2,2,24 for STARFlow's deep-shallow stack")
    order: str = option("alternate", "token order of each block: alternate (identity, flip, identity, ...) or same "
                        "(identity in every block)", choices=ORDERS)
    start_token: str = option("zero", "what gives token 1 its parameters: zero (none: it passes unchanged, TarFlow) or "
                              "learned (a learned start embedding in front of the sequence, so every token is "
                              "transformed)", choices=("zero", "learned"))
    num_classes: int = option(0, "classes for conditioning (0 = unconditional); label num_classes is the null class")
    condition_top_only: bool = option(False, "condition only the last block (nearest the prior; for video, the last "
                                      "block over the whole clip) on the class, as STARFlow's deep block; the "
                                      "others model the data unconditionally")
    noise_conditioning: bool = option(False, "iTARFlow: the model takes a noise level t (the std of gaussian noise "
                                      "added to the data) as an input of every block, as Fourier features of log t; "
                                      "it is trained on x + t eps with t drawn in [noise_level_min, noise_level_max]")
    noise_level_min: float = option(0.01, "noise-conditioned models: the lowest trained noise level t0 (model units, "
                                    "data in [-1, 1])")
    noise_level_max: float = option(0.3, "noise-conditioned models: the highest trained noise level t1, at which "
                                    "samples are generated before iterative denoising")
    # ----- text prefix (caption conditioning, STARFlow text-to-image; see docs/text_to_image.md)
    text_encoder: str = option("", "captions as a causal prefix of the last block: '' (none), learned (a small text "
                               "encoder trained with the flow from scratch) or the directory of a Hugging Face text "
                               "encoder and tokenizer (T5, CLIP-text; frozen; needs the text extra)")
    captions: str = option("", "caption-conditioned models: the caption set that turns the dataset's class labels "
                           "into captions (train and held-out phrasings)", choices=("", *CAPTION_SETS))
    caption_length: int = option(8, "caption-conditioned models: prefix positions P (tokens per caption; longer "
                                 "prompts are refused by the learned encoder's tokenizer, truncated by a Hugging Face "
                                 "one)")
    caption_vocabulary: str = option("", "text_encoder=learned: its words in id order, space-separated (set from the "
                                     "caption set's train phrasings)")
    text_layers: int = option(2, "text_encoder=learned: bidirectional Transformer layers of the text encoder")
    # ----- Normalizing Trajectory Models (architecture=ntm)
    trajectory_steps: int = option(4, "ntm: steps K of the noising trajectory x_0 (data) -> x_K (noise); the model "
                                   "generates in K steps")
    trajectory_signal: list[float] | None = option(None, "ntm: the signal level a_k of x_k = a_k x_0 + sqrt(1 - a_k^2) "
                                                   "eps for k = 1..K, strictly decreasing in [0, 1), e.g. "
                                                   "0.9,0.6,0.3,0; none: a_k = cos(pi k / 2K)")
    predictor_layers: int = option(4, "ntm: Transformer layers of the deep predictor shared by every step, which "
                                   "reads x_k and gives step k's flow its per-token features and Gaussian")
    # ----- per-token transform and prior
    transform: str = option("affine", "per-token transform: affine z=(x-b)/sigma, additive z=x-b (with a learned "
                            "prior variance), mixture z=Phi^-1(F(x)), F a per-dimension mixture-of-Gaussians CDF "
                            "(Mix-1), or mixture-d (Mix-d: one mixture over the whole token vector, z_i = "
                            "Phi^-1(F(x_i | x_<i)))", choices=TRANSFORM_NAMES)
    scale: str = option("exp", "affine scale: exp (sigma = exp(a)) or softplus (sigma = softplus(a + log(e-1)), "
                        "1 at a = 0)", choices=("exp", "softplus"))
    log_scale_clip: float = option(0.0, "affine: soft-clip a to c tanh(a/c) with this c > 0 (0: no clip)")
    mixture_components: int = option(4, "mixture transforms: Gaussian components K (per token dimension for Mix-1, "
                                     "per token for Mix-d)")
    mixture_codebook: bool = option(False, "text, transform=mixture-d, chars_per_token=1: block 0 (nearest the data) "
                                    "has one component per vocabulary entry, at that entry's codebook mean and scale "
                                    "plus predicted offsets, so it starts as a discrete autoregressive model of the "
                                    "ids (TarFlowLM's connection); the other blocks keep mixture_components")
    prior: str = option("auto", "prior of z: standard N(0, I), learned (diagonal Gaussian with a learned std per "
                        "token dimension), or auto (learned for additive transforms, standard otherwise)",
                        choices=PRIORS)
    likelihood_prior: str = option("learned", "with a learned prior, the density log p(x) uses: learned (N(0, s^2), "
                                   "the one samples are drawn from) or standard (N(0, I): the loss and bits/dim of "
                                   "apple/ml-tarflow's additive models); a standard prior always uses N(0, I)",
                                   choices=("learned", "standard"))
    # ----- the Transformer of each block
    width: int = option(128, "Transformer width (model channels)")
    head_dim: int = option(32, "attention head dimension; heads = width / head_dim")
    positions: str = option("learned", "how each block's Transformer knows positions: learned (an embedding added to "
                            "its input), rope (rotary embedding of queries and keys; mixer=attention only) or "
                            "factorised (video: a learned embedding of the place within the frame, shared by every "
                            "frame, plus one of the frame)", choices=("learned", "rope", "factorised"))
    mlp_ratio: int = option(4, "MLP hidden width as a multiple of width")
    dropout: float = option(0.0, "residual dropout of the model's Transformer layers (not a caption encoder's) in "
                            "training, in [0, 1) (0: none; nanoGPT's character-level Shakespeare uses 0.2); sampling "
                            "and evaluation never drop")
    output_norm: str = option("layernorm", "normalisation before each block's output projection: layernorm, or "
                              "none (checkpoints imported from apple/ml-tarflow)", choices=("layernorm", "none"))
    sigma_reparam: bool = option(False, "sigma-Reparam: every linear layer of each block's Transformer (and its input "
                                 "projection) as W_hat = gamma W / sigma(W), one power-iteration step per training "
                                 "step; not the zero-initialised output projection (its sigma would be 0)")
    mixer: str = option("attention", "token mixer of each Transformer layer: causal softmax attention, or the "
                        "Attention Free Transformer with a learned T x T position bias (aft-full), the bias only "
                        "within aft_window positions (aft-local), no bias (aft-simple), or a learned relative kernel "
                        "of aft_window lags (aft-conv)",
                        choices=("attention", "aft-full", "aft-local", "aft-simple", "aft-conv"))
    aft_window: int = option(8, "window in tokens of aft-local and aft-conv (ignored by the other mixers)")
    exclusive_attention: bool = option(False, "Exclusive Self Attention (XSA): remove from each head's output its "
                                       "component along the value of the query's own position (the last visible "
                                       "token), before the output projection; mixer=attention only")

    def __post_init__(self):
        check_choices(self)
        for name in ("image_size", "channels", "patch_size", "width", "num_blocks", "head_dim", "mlp_ratio",
                     "mixture_components", "context", "chars_per_token", "embed_dim", "frame_count"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        self.check_layers()
        if self.num_classes < 0:
            raise ConfigError(f"num_classes must be 0 (unconditional) or more, got {self.num_classes}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}")
        for name in ("sigma_reparam", "exclusive_attention", "condition_top_only", "noise_conditioning"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not self.log_scale_clip >= 0 or self.log_scale_clip == float("inf"):
            raise ConfigError(f"log_scale_clip must be a finite number >= 0 (0: no clip), got {self.log_scale_clip}")
        if not 0 < self.noise_level_min < self.noise_level_max < float("inf"):
            raise ConfigError(f"noise levels must satisfy 0 < noise_level_min < noise_level_max (finite), got "
                              f"{self.noise_level_min} and {self.noise_level_max}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.aft_window < 1:
            raise ConfigError(f"aft_window must be at least 1, got {self.aft_window}")
        if self.exclusive_attention and self.mixer != "attention":
            raise ConfigError(f"exclusive_attention (XSA) needs mixer=attention, got mixer={self.mixer!r}")
        if self.positions == "rope" and (self.mixer != "attention" or self.head_dim % 2):
            raise ConfigError(f"positions=rope needs mixer=attention and an even head_dim, got mixer={self.mixer!r}, "
                              f"head_dim={self.head_dim}")
        if not (0 <= self.latent_scale < float("inf")) or abs(self.latent_shift) == float("inf") \
                or self.latent_shift != self.latent_shift:
            raise ConfigError(f"latent_scale must be a finite number >= 0 (0: measure) and latent_shift finite, got "
                              f"{self.latent_scale}, {self.latent_shift}")
        if self.context % self.chars_per_token:
            raise ConfigError(f"context={self.context} is not divisible by chars_per_token={self.chars_per_token}")
        if self.modality != "video" and (self.frame_count != 1 or self.frame_layout != "global-local"):
            raise ConfigError(f"frame_count and frame_layout apply to modality=video, not {self.modality!r}: leave "
                              f"them unset")
        if self.positions == "factorised" and self.modality != "video":
            raise ConfigError(f"positions=factorised (places within a frame plus frames) applies to modality=video, "
                              f"not {self.modality!r}: use learned or rope")
        if self.autoencoder and self.modality not in ("latents", "video"):
            raise ConfigError(f"autoencoder applies to modality=latents or video, not {self.modality!r}: leave it "
                              f"unset, or set modality=latents to model its latents")
        if self.modality == "video" and self.architecture != "flow":
            raise ConfigError(f"video models are flows: set architecture=flow, not {self.architecture!r}")
        if self.architecture == "autoregressive" and self.modality != "text":
            raise ConfigError(f"architecture={self.architecture!r} applies to modality=text only")
        self.check_trajectory()
        self.check_pretzel()
        self.check_captions()
        if self.modality == "text" and self.num_classes:
            raise ConfigError(f"text models are unconditional: set num_classes=0, not {self.num_classes}")
        if self.mixture_codebook and (self.modality, self.transform, self.chars_per_token, self.architecture) != (
                "text", "mixture-d", 1, "flow"):
            raise ConfigError(f"mixture_codebook ties block 0's Mix-d components to the text codebook: it needs "
                              f"modality=text, transform=mixture-d, chars_per_token=1 and architecture=flow, got "
                              f"{self.modality!r}, {self.transform!r}, {self.chars_per_token} and "
                              f"{self.architecture!r}")
        if self.width % self.head_dim:
            raise ConfigError(f"width={self.width} is not divisible by head_dim={self.head_dim}")

    def check_layers(self) -> None:
        layers = self.layers_per_block
        if isinstance(layers, int) and not isinstance(layers, bool):
            if layers < 1:
                raise ConfigError(f"layers_per_block must be at least 1, got {layers}")
            return
        if not isinstance(layers, (list, tuple)) or not all(isinstance(n, int) and n >= 1 for n in layers):
            raise ConfigError(f"layers_per_block must be a positive integer or a list of them, got {layers!r}")
        if len(layers) != self.num_blocks:
            raise ConfigError(f"layers_per_block lists {len(layers)} blocks but num_blocks={self.num_blocks}: give "
                              f"one layer count per block, or one number for all")
        self.layers_per_block = list(layers)

    def check_captions(self) -> None:
        """A caption-conditioned model: a caption set whose classes are the model's, the attention mixer (the prefix
        takes attention positions), and for the learned encoder its vocabulary (set from the caption set)."""
        if not self.text_encoder:
            return
        if not self.captions:
            raise ConfigError(f"text_encoder={self.text_encoder!r} needs a caption set to caption the labels: set "
                              f"captions to one of {sorted(CAPTION_SETS)}")
        classes = len(CAPTION_SETS[self.captions]["synonyms"])
        if self.num_classes != classes:
            raise ConfigError(f"caption set {self.captions!r} captions {classes} classes: set num_classes={classes}, "
                              f"not {self.num_classes}")
        if self.mixer != "attention" or self.architecture != "flow" or self.modality == "text":
            raise ConfigError("a text prefix needs architecture=flow, mixer=attention and an image, latent or video "
                              "modality")
        if self.caption_length < 1 or self.text_layers < 1:
            raise ConfigError(f"caption_length and text_layers must be at least 1, got {self.caption_length}, "
                              f"{self.text_layers}")
        if self.text_encoder != "learned":
            return
        longest = max(len(words_of(caption)) for split in ("train", "held-out")
                      for captions in phrasings(self.captions, split) for caption in captions)
        if self.caption_length < longest:
            raise ConfigError(f"caption set {self.captions!r} has phrasings of {longest} words: set caption_length to "
                              f"at least {longest}, not {self.caption_length}")
        if not self.caption_vocabulary:
            self.caption_vocabulary = " ".join(caption_vocabulary(self.captions))

    def check_trajectory(self) -> None:
        """The NTM fields: K >= 1, a signal schedule of K strictly decreasing levels in [0, 1), and what NTM
        does not combine with."""
        steps = self.trajectory_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"trajectory_steps (K, the steps of the noising trajectory) must be an integer of at "
                              f"least 1, got {steps!r}")
        if self.predictor_layers < 1:
            raise ConfigError(f"predictor_layers must be at least 1, got {self.predictor_layers}")
        signal = self.trajectory_signal
        if signal is not None:
            if not isinstance(signal, (list, tuple)) or not all(
                    isinstance(a, (int, float)) and not isinstance(a, bool) for a in signal):
                raise ConfigError(f"trajectory_signal must be a list of numbers (a_1 .. a_K), got {signal!r}")
            signal = self.trajectory_signal = [float(a) for a in signal]
            if len(signal) != steps:
                raise ConfigError(f"trajectory_signal lists {len(signal)} levels but trajectory_steps={steps}: give "
                                  f"one signal level a_k per step, or none for the cosine schedule")
            if not all(0 <= a < 1 for a in signal):
                raise ConfigError(f"trajectory_signal levels a_k must lie in [0, 1) (a_0 = 1 is the data), got "
                                  f"{signal}")
            if any(later >= earlier for earlier, later in zip(signal, signal[1:])):
                raise ConfigError(f"trajectory_signal must decrease strictly from a_1 to a_K (each step noisier "
                                  f"than the one before), got {signal}")
        if self.architecture != "ntm":
            return
        if self.modality != "pixels":
            raise ConfigError(f"architecture=ntm models images: set modality=pixels, not {self.modality!r}")
        if self.noise_conditioning or self.condition_top_only:
            raise ConfigError("architecture=ntm takes the noise level and the class through its predictor: set "
                              "noise_conditioning=false and condition_top_only=false")

    def check_pretzel(self) -> None:
        """A pretzel model: images as pixels through affine flows with attention, no class or noise input, a
        vocabulary (when set: training sets it from the data) with the words the model reads and writes itself, and a
        position table that holds at least one image."""
        if self.architecture != "pretzel":
            for name in ("words", "language_model"):
                if getattr(self, name):
                    raise ConfigError(f"{name} is an option of architecture=pretzel, not {self.architecture!r}: leave "
                                      f"it unset")
            return
        if self.modality != "pixels" or self.transform != "affine" or self.mixer != "attention":
            raise ConfigError(f"architecture=pretzel needs modality=pixels, transform=affine and mixer=attention, got "
                              f"{self.modality!r}, {self.transform!r} and {self.mixer!r}")
        if self.num_classes or self.noise_conditioning or self.text_encoder or self.prior == "learned":
            raise ConfigError("architecture=pretzel reads its condition from the sequence itself: set num_classes=0, "
                              "noise_conditioning=false, text_encoder='' and prior=auto or standard")
        words = self.words.split()
        missing = [word for word in PRETZEL_WORDS if word not in words]
        if words and (missing or len(set(words)) != len(words)):
            raise ConfigError(f"words must list each word of the vocabulary once, including "
                              f"{' '.join(PRETZEL_WORDS)}; got {self.words!r} (missing: {missing or 'none'})")
        self.check_language_model()
        image_tokens = (self.image_size // self.patch_size) ** 2
        if self.context < image_tokens + 2:
            raise ConfigError(f"context={self.context} positions cannot hold <bos>, <image> and one image of "
                              f"{image_tokens} tokens: set context to the longest sequence (at least "
                              f"{image_tokens + 2})")

    def check_language_model(self) -> None:
        """A Hugging Face language-model stream: its config read once from the directory; width and depth match."""
        if not self.language_model:
            if self.language_model_config:
                raise ConfigError("language_model_config is set from language_model: leave it unset")
            return
        if not self.language_model_config:
            self.language_model_config = read_config_text(self.language_model)
        spec = LlamaSpec.from_json(self.language_model_config, self.context)
        if (spec.hidden_size, spec.layers) != (self.width, self.block_layers[-1]):
            raise ConfigError(f"the language model in {self.language_model!r} has hidden size {spec.hidden_size} and "
                              f"{spec.layers} layers: set width={spec.hidden_size} and the last of layers_per_block "
                              f"to {spec.layers} (the flow stream pairs each of its layers with one of the LM's), got "
                              f"{self.width} and {self.block_layers[-1]}")

    @property
    def signal_levels(self) -> list[float]:
        """a_1 .. a_K of the noising trajectory: ``trajectory_signal``, or the cosine schedule cos(pi k / 2K)."""
        if self.trajectory_signal is not None:
            return list(self.trajectory_signal)
        steps = self.trajectory_steps
        return [math.cos(math.pi * k / (2 * steps)) if k < steps else 0.0 for k in range(1, steps + 1)]

    @property
    def block_layers(self) -> list[int]:
        """Transformer layers of block 0 .. N-1."""
        if isinstance(self.layers_per_block, int):
            return [self.layers_per_block] * self.num_blocks
        return list(self.layers_per_block)

    @property
    def latent(self) -> bool:
        """Whether the flow models autoencoder latents (modality=latents, or video frames through an autoencoder):
        a continuous density, reported in latent nats/dim, and samples decoded to images."""
        return models_latents(self.modality, self.autoencoder)

    @property
    def vocab_size(self) -> int:
        """Text: ids in the vocabulary (256 bytes, or the characters of ``vocabulary``)."""
        return 256 if self.tokenizer == "byte" else len(self.vocabulary)

    @property
    def num_tokens(self) -> int:
        """T, the modality's tokens per example (pixels: (image_size / patch_size)^2)."""
        return build_modality(self).num_tokens

    @property
    def token_dim(self) -> int:
        """D, values per token (pixels: channels * patch_size^2)."""
        return build_modality(self).token_dim

    @property
    def num_dims(self) -> int:
        """Dimensions of one example that bits/dim divide by (pixels: C H W)."""
        return build_modality(self).num_dims
