"""The report as one self-contained HTML page: images inlined as data: URIs, no script, no network."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .contents import RunContents, Sample, eval_command, fid_command, train_command
from .figures import bits_per_dim_plot, entropy_plot, optimisation_plot

MIME_TYPES = {".png": "image/png", ".gif": "image/gif"}
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { padding: 0.15em 0.8em; text-align: left; }
tr:nth-child(even) { background: #f4f4f4; }
.config { display: flex; gap: 2em; flex-wrap: wrap; align-items: flex-start; }
code, pre { background: #f4f4f4; padding: 0.2em 0.4em; font-size: 0.9em; white-space: pre-wrap; word-break: break-all; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; }
figcaption { font-size: 0.85em; color: #555; } img { max-width: 100%; image-rendering: pixelated; }
.samples img { width: 340px; }
.muted { color: #777; }
"""


def render(contents: RunContents) -> str:
    """The whole page of a run."""
    sections = [summary(contents), curves(contents), samples(contents), results(contents), configuration(contents)]
    title = f"tarflow run {contents.run_dir.name}"
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{escape(title)}</title>\n"
            f"<style>{STYLE}</style>\n</head>\n<body>\n<h1>{escape(title)}</h1>\n"
            + "\n".join(section for section in sections if section) + "\n</body>\n</html>\n")


def summary(contents: RunContents) -> str:
    """Status, final or latest test bits/dim, and timing."""
    train = contents.config["train"]
    last = contents.records[-1] if contents.records else {}
    if contents.finished:
        status = f"finished: {contents.steps:,} steps"
    else:
        status = f"in progress or stopped at step {contents.last_step:,} of {contents.steps:,}"
    rows = [("status", status), ("run directory", str(contents.run_dir)),
            ("dataset", train["dataset"]), ("tarflow version", contents.version or "unknown")]
    evaluation = contents.evaluation if contents.finished else None
    figure = figure_of(contents)
    if evaluation:
        counted = (f"{evaluation['chars']:,} characters, {evaluation['bound']}" if figure.key == "bits_per_char"
                   else f"{evaluation['images']:,} images" if "images" in evaluation
                   else f"{evaluation['sequences']:,} sequences{image_figure(evaluation)}")
        spread = f" ± {evaluation['stderr']:.4f}" if "stderr" in evaluation else ""  # pretzel runs give none yet
        rows.append((f"test {figure.unit}", f"{evaluation[figure.key]:.4f}{spread} "
                                            f"({counted}, {evaluation.get('draws', 1)} draw(s))"))
    held_out = [record for record in contents.records if figure.record_key in record]
    if held_out and not evaluation:
        rows.append((f"latest {figure.record_name}", f"{held_out[-1][figure.record_key]:.4f} at step "
                                                     f"{held_out[-1]['step']:,}"))
    if "elapsed_s" in last:
        seconds = last["elapsed_s"]
        per_step = seconds / max(1, last["step"])
        examples = train["batch_size"] * (contents.config["model"]["context"] if figure.key == "bits_per_char" else 1)
        rows.append(("time", f"{duration(seconds)} for {last['step']:,} steps ({per_step:.3f} s per step, "
                             f"{examples / per_step:,.1f} {figure.examples}/s, evaluations and samples included)"))
    if evaluation and "train_time_s" in evaluation:
        rows.append(("time with the final evaluation", duration(evaluation["train_time_s"])))
    if evaluation and "device" in evaluation:
        rows.append(("device", f"{evaluation['device']}, {evaluation.get('processes', 1)} process(es)"))
    rows.append(("page written", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")))
    rows.append(("reproduce", code(train_command(contents.config, contents.run_dir))))
    return section("Summary", table(rows))


@dataclass(frozen=True)
class Figure:
    """A run's figure: its key in eval.json and unit, the held-out figure logged during training (key in
    metrics.jsonl and the split it is measured on), and what the trainer counts per second."""

    key: str
    unit: str
    record_key: str
    held_out: str
    examples: str

    @property
    def record_name(self) -> str:
        return f"{self.held_out} {self.unit}"


def image_figure(evaluation: dict) -> str:
    """"; image bits/dim 0.9876" of a pretzel run's evaluation, empty for a text-only baseline's."""
    value = evaluation.get("image_bits_per_dim")
    return "" if value is None else f"; image bits/dim {value:.4f}"


def figure_of(contents: RunContents) -> Figure:
    """Latent models report nats/dim, text models bits/char (validation during training), images bits/dim."""
    from ..modalities import models_latents

    model = contents.config["model"]
    modality = model.get("modality")
    latent = models_latents(modality, model.get("autoencoder", ""))
    if model.get("architecture") == "pretzel":  # words and images: the text figure first
        return Figure("text_bits_per_word", "text bits/word", "test_text_bits_per_word", "test", "sequences")
    if latent:
        return Figure("latent_nats_per_dim", "latent nats/dim", "test_nats_per_dim", "test", "images")
    if modality == "text":
        return Figure("bits_per_char", "bits/char", "validation_bits_per_char", "validation", "characters")
    return Figure("bits_per_dim", "bits/dim", "test_bpd", "test", "images")


def curves(contents: RunContents) -> str:
    records = contents.records
    if not records:
        return section("Curves", "<p class=\"muted\">no metric records yet (metrics.jsonl)</p>")
    figure = figure_of(contents)
    parts = [picture(bits_per_dim_plot(records), f"{figure.unit} against step: train (raw, smoothed) and "
                                                 f"{figure.held_out}"),
             picture(optimisation_plot(records), "learning rate and gradient norm against step"),
             picture(entropy_plot(records, contents.config["train"]["entropy_warn"]),
                     "attention entropy per block and layer (solid: mean over heads; dashed: minimum)")]
    bad = [record["step"] for record in records if "bad_step" in record]
    if bad:
        parts.append(f"<p>{len(bad)} step(s) skipped for a non-finite batch, loss or gradient: steps "
                     f"{escape(', '.join(map(str, bad[:20])))}{' ...' if len(bad) > 20 else ''}</p>")
    return section("Curves", "\n".join(part for part in parts if part))


def samples(contents: RunContents) -> str:
    """Sample grids over training, then the final one (GIFs and text too, for runs that write them)."""
    if not contents.samples:
        return ""
    return section("Samples", "\n".join(sample_figure(sample) for sample in contents.samples), "samples")


def sample_figure(sample: Sample) -> str:
    caption = f"step {sample.step:,}" if sample.step is not None else "final model"
    if sample.path.suffix == ".txt":
        return f"<figure><pre>{escape(sample.path.read_text(errors='replace'))}</pre>" \
               f"<figcaption>{caption}</figcaption></figure>"
    return picture(sample.path.read_bytes(), caption, MIME_TYPES[sample.path.suffix])


def results(contents: RunContents) -> str:
    """The final evaluation, saved FID results and other result plots, each with the command that repeats it."""
    parts = []
    if contents.evaluation:
        figure = figure_of(contents)
        data_dir = contents.config["train"]["data_dir"]
        repeat = "repeat: " + code(eval_command(contents.evaluation, contents.run_dir, data_dir))
        parts.append(f"<h3>Test {figure.unit} (eval.json)</h3>" + table(flat(contents.evaluation)) + f"<p>{repeat}</p>")
    for path, result in contents.fids:
        parts.append(f"<h3>FID ({escape(path.name)})</h3>" + table(flat(result))
                     + "<p>repeat: " + code(fid_command(result, contents.run_dir)) + "</p>")
    for path in contents.pictures:
        parts.append(picture(path.read_bytes(), path.name))
    if not contents.fids:
        parts.append("<p class=\"muted\">FID: save a result here with <code>tarflow fid "
                     f"{escape(str(contents.run_dir))} --weights FILE &gt; {escape(str(contents.run_dir))}/fid.json"
                     "</code> and it is shown at the next refresh (<code>tarflow report RUN</code>).</p>")
    return section("Results", "\n".join(parts))


def configuration(contents: RunContents) -> str:
    tables = [f"<div><h3>{name}</h3>{table([(key, json.dumps(value)) for key, value in values.items()])}</div>"
              for name, values in contents.config.items()]
    return section("Config (config.json)", "<div class=\"config\">" + "".join(tables) + "</div>")


def flat(result: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested result fields as (a.b, value) rows."""
    rows = []
    for key, value in result.items():
        if isinstance(value, dict):
            rows += flat(value, f"{prefix}{key}.")
        else:
            rows.append((prefix + key, f"{value:.6g}" if isinstance(value, float) else json.dumps(value)))
    return rows


def picture(png: bytes | None, caption: str, mime: str = "image/png") -> str:
    if png is None:
        return ""
    uri = f"data:{mime};base64,{base64.b64encode(png).decode()}"
    return f"<figure><img src=\"{uri}\" alt=\"{escape(caption)}\"><figcaption>{escape(caption)}</figcaption></figure>"


class Html(str):
    """Text that is HTML already (not escaped again)."""


def table(rows: list[tuple[str, str]]) -> str:
    """Rows of (name, value); values are escaped unless they are `Html`."""
    cells = "".join(f"<tr><th>{escape(name)}</th><td>{escape(value)}</td></tr>" for name, value in rows)
    return f"<table>{cells}</table>"


def section(title: str, body: str, kind: str = "") -> str:
    kind = f" class=\"{kind}\"" if kind else ""
    return f"<section{kind}>\n<h2>{escape(title)}</h2>\n{body}\n</section>"


def code(text: str) -> Html:
    return Html(f"<code>{escape(text)}</code>")


def duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min {seconds} s" if hours else f"{minutes} min {seconds} s"


def escape(text: str) -> str:
    return text if isinstance(text, Html) else html.escape(str(text))
