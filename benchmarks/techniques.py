"""The Transformer techniques of issue 5 on MNIST, each against the default on the same step budget.

    python benchmarks/techniques.py --data-dir ../shared/data/mnist                 # the full report (< 1 h, 2 cores)
    python benchmarks/techniques.py --data-dir ../shared/data/mnist --steps 4 --lr-steps 4 --test-images 64 \\
        --out /tmp/tech --docs /tmp/tech-docs                                       # a smoke run

Part 1: the `mnist` preset's model (4 blocks x 4 layers, width 128, patch 4, class-conditional) trained with
each option (default, sigma-Reparam, XSA, AFT-full/local/simple/conv) for ``--steps`` steps at batch
``--batch`` and the preset's learning rate: test bits/dim (EMA weights, the first ``--test-images`` MNIST test
images, one dequantization draw), training throughput (images/s of forward + backward + optimizer step only),
and the lowest attention entropy of any head during training (measured every ``--entropy-every`` steps on
16 fixed training images; for AFT the entropy of its implicit per-feature weights).

Part 2: entropy collapse. The default and the sigma-Reparam model trained at high learning rates
(``--high-lr``, one pair per value) for ``--lr-steps`` steps: loss curves (log scale), attention entropy, spikes.

Each run's result is cached as JSON in ``--out`` (a rerun skips finished runs); the table, the plots and
the command go to ``--docs`` (techniques.md, techniques_*.png).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tarflow import TarFlow
from tarflow.data import bin_width, load_dataset
from tarflow.metrics import evaluate_bpd
from tarflow.metrics.entropy import attention_entropy, uniform_entropy
from tarflow.presets import get_preset
from tarflow.train.step import ema_copy, start_optimisation, train_step
from tarflow.train.trainer import batch, entropy_batch

OPTIONS = {
    "default": {},
    "sigma-reparam": {"sigma_reparam": True},
    "xsa": {"exclusive_attention": True},
    "aft-full": {"mixer": "aft-full"},
    "aft-local": {"mixer": "aft-local", "aft_window": 8},
    "aft-simple": {"mixer": "aft-simple"},
    "aft-conv": {"mixer": "aft-conv", "aft_window": 8},
}
COLLAPSE_PAIR = ("default", "sigma-reparam")


def train_run(name: str, model_fields: dict, lr: float, steps: int, args, data, test) -> dict:
    """Train one model from the mnist preset with the trainer's step; return its curves and measurements."""
    config = get_preset("mnist")
    for field, value in model_fields.items():
        setattr(config.model, field, value)
    config.model.__post_init__()
    train_config, model_config = config.train, config.model
    train_config.steps, train_config.batch_size, train_config.lr = steps, args.batch, lr
    train_config.warmup_steps = max(1, round(steps * args.warmup_fraction))
    cpu = torch.device("cpu")
    torch.manual_seed(train_config.seed)
    model = TarFlow(model_config)
    run = start_optimisation(model, train_config, cpu, ema=ema_copy(model, train_config))
    probe = entropy_batch(data, train_config, model_config, cpu)
    log_bin = math.log(bin_width(data.levels))
    curve, entropy, nonfinite, train_seconds = [], [(0, attention_entropy(model, *probe))], 0, 0.0
    diverged, warmup = None, min(10, steps // 2)  # throughput: the steps after the first `warmup`
    model.train()
    for step in range(steps):
        x, y = batch(data, step, train_config, model_config, cpu)
        t0 = time.perf_counter()
        result = train_step(run, x, y, step)  # as the trainer does: a non-finite step is skipped
        train_seconds += time.perf_counter() - t0 if step >= warmup else 0.0
        nonfinite += result.skipped is not None
        bpd = float("nan") if result.skipped else (result.loss.item() - log_bin) / math.log(2)
        curve.append((step + 1, bpd, float("nan") if result.skipped else result.grad_norm.item()))
        if (step + 1) % args.entropy_every == 0 or step + 1 == steps:
            entropy.append((step + 1, attention_entropy(model, *probe)))
        if (step + 1) % 25 == 0:
            print(f"  {name} lr {lr:g} step {step + 1}/{steps}: bpd {bpd:.3f}, "
                  f"min entropy {min_entropy(entropy[-1][1]):.3f}, {train_seconds:.0f} s", flush=True)
        if run.bad_steps.exhausted:
            diverged = step + 1
            print(f"  {name}: {run.bad_steps.in_a_row} non-finite steps in a row, stopped at step {step + 1}",
                  flush=True)
            break
    t0 = time.perf_counter()
    result = evaluate_bpd(run.ema, test.images[:args.test_images], test.labels[:args.test_images], test.levels,
                          batch_size=250, noise_block=250)  # the noise its released figures were measured with
    last = [b for _, b, _ in curve[-args.tail:] if math.isfinite(b)]
    return {"name": name, "model": model_fields, "lr": lr, "steps": steps, "batch": args.batch,
            "warmup_steps": train_config.warmup_steps, "parameters": sum(p.numel() for p in model.parameters()),
            "test_bpd": result["bits_per_dim"], "test_bpd_stderr": result["stderr"],
            "test_images": args.test_images, "eval_s": round(time.perf_counter() - t0, 1),
            "train_bpd_tail": sum(last) / len(last) if last else float("nan"),
            "images_per_s": (len(curve) - warmup) * args.batch / train_seconds, "train_s": round(train_seconds, 1),
            "nonfinite_steps": nonfinite, "diverged_at": diverged, "curve": curve, "entropy": entropy,
            "uniform_entropy": uniform_entropy(model_config.num_tokens - 1)}


def interleaved_speed(args, data) -> dict[str, float]:
    """Training images/s of every option, timed round-robin (``--speed-rounds`` rounds of 5 steps each) so
    that a machine shared with other jobs slows every option alike; the median step time of each option."""
    config = get_preset("mnist")
    train_config = config.train
    train_config.batch_size, train_config.steps = args.batch, 10 ** 6
    cpu = torch.device("cpu")
    runs, times = {}, {name: [] for name in OPTIONS}
    for name, fields in OPTIONS.items():
        option = get_preset("mnist")
        for field, value in fields.items():
            setattr(option.model, field, value)
        torch.manual_seed(0)
        runs[name] = start_optimisation(TarFlow(option.model).train(), train_config, cpu)  # no EMA
    x, y = batch(data, 0, train_config, config.model, cpu)
    for name in OPTIONS:  # warm-up
        for step in range(2):
            train_step(runs[name], x, y, step)
    for _ in range(args.speed_rounds):
        for name in OPTIONS:
            for step in range(5):
                t0 = time.perf_counter()
                train_step(runs[name], x, y, step)
                times[name].append(time.perf_counter() - t0)
    return {name: args.batch / float(np.median(t)) for name, t in times.items()}


def min_entropy(ent: list) -> float:
    return min(e for block in ent for layer in block for e in layer)


def layer_min(ent: list) -> list[float]:
    return [min(layer) for block in ent for layer in block]


def cached(path: Path, fn):
    if path.is_file():
        print(f"{path.name}: cached")
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    out = fn()
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out) + "\n")
    print(f"{path.name}: test bpd {out['test_bpd']:.4f}, {out['images_per_s']:.1f} img/s, "
          f"min entropy {min(min_entropy(e) for _, e in out['entropy'][1:]):.3f}, wall {out['wall_s']:.0f} s", flush=True)
    return out


# ----- plots ---------------------------------------------------------------------------------------

def smooth(values: list[float], k: int) -> np.ndarray:
    v = np.array(values, dtype=float)
    if len(v) < k or k < 2:
        return v
    out = np.full_like(v, np.nan)
    for i in range(k - 1, len(v)):
        w = v[i - k + 1:i + 1]
        w = w[np.isfinite(w)]
        out[i] = w.mean() if len(w) else np.nan
    return out


def plot_runs(runs: list[dict], path: Path, title: str, log: bool = False) -> None:
    """Train bits/dim (smoothed; with ``log``, every step on a log axis, so spikes show) and attention entropy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    k = 1 if log else max(1, len(runs[0]["curve"]) // 25)
    tails = []
    for r in runs:
        steps = [s for s, _, _ in r["curve"]]
        label = f"{r['name']} (lr {r['lr']:g})"
        line, = ax1.plot(steps, smooth([b for _, b, _ in r["curve"]], k), lw=1.5, label=label)
        tails += [b for _, b, _ in r["curve"][len(r["curve"]) // 5:] if math.isfinite(b)]
        es = [s for s, _ in r["entropy"]]
        ax2.plot(es, [min_entropy(e) for _, e in r["entropy"]], color=line.get_color(), lw=1.5, label=label)
        ax2.plot(es, [float(np.mean(layer_min(e))) for _, e in r["entropy"]], color=line.get_color(), lw=1, ls="--")
    if log:
        ax1.set_yscale("log")
    elif tails:
        lo, hi = np.percentile(tails, 1), np.percentile(tails, 99)
        ax1.set_ylim(lo - 0.05 * (hi - lo), hi + 0.1 * (hi - lo) + 1e-3)
    ax1.set(xlabel="step", ylabel="train bits/dim" + ("" if k == 1 else f" (mean of {k} steps)"), title=title)
    ax2.set(xlabel="step", ylabel="attention entropy, nats", title="min over all heads (solid), mean of layer minima (dashed)")
    ax2.axhline(runs[0]["uniform_entropy"], color="grey", lw=0.8, ls=":")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ----- report --------------------------------------------------------------------------------------

def fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def write_report(args, runs: list[dict], pairs: dict[float, list[dict]], speed: dict, wall_s: float,
                 docs: Path) -> None:
    base = runs[0]
    lines = [
        "# Transformer techniques on MNIST: sigma-Reparam, XSA, AFT, attention entropy",
        "",
        "Produced by one command on this machine "
        f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}, "
        "shared with other jobs), in "
        f"{wall_s / 60:.0f} min of wall time (the training runs' and the speed measurement's, summed):",
        "",
        "```bash",
        "python " + " ".join(sys.argv),
        "```",
        "",
        f"Model: the `mnist` preset (28x28, patch 4 so T = 49 tokens, 4 blocks x 4 layers, width 128, 2 heads of 64, "
        f"class-conditional), changed only by the option in the first column. Training: {args.steps} steps at batch "
        f"{args.batch} (the preset trains 2400 steps at batch 128; this is a short, equal budget, so the numbers "
        f"compare options early in training, not converged models), AdamW lr {base['lr']:g} (the preset's), "
        f"warmup {base['warmup_steps']} steps then cosine decay, grad clip 1.0, EMA 0.999, seed 0, the same batches "
        f"for every run.",
        "",
        f"- **test bits/dim**: EMA weights, the first {args.test_images} MNIST test images, one uniform "
        f"dequantization draw (± standard error over images). Every run is one seed (seed 0), so the ± says "
        f"nothing about seed-to-seed spread.",
        f"- **train bits/dim**: mean of the last {args.tail} training steps.",
        "- **images/s**: training throughput (forward + backward + optimizer step), float32 on the CPU, "
        f"measured apart from the runs: every option in turn, {args.speed_rounds} rounds of 5 steps at batch "
        f"{args.batch}, the median step; round-robin so that other jobs on the machine slow every option "
        "alike. (In brackets: the same over the run itself, which other jobs disturbed unevenly.)",
        f"- **min entropy**: the lowest attention entropy of any head (block, layer, head) at any probe "
        f"(every {args.entropy_every} steps, 16 fixed training images), H = -sum_j A_ij log A_ij averaged over "
        f"queries; uniform attention over the visible tokens would give {base['uniform_entropy']:.2f} nats. "
        "For AFT it is the entropy of AFT's implicit weights softmax_j(K_j + w_ij), per feature, averaged over "
        "features (one value per layer), which is not the same quantity as a softmax-attention head's.",
        "",
        "| option | test bits/dim | train bits/dim | images/s | min entropy (nats) | entropy at end, min | parameters |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(f"| {r['name']} | {fmt(r['test_bpd'])} ± {fmt(r['test_bpd_stderr'])} | {fmt(r['train_bpd_tail'])} "
                     f"| {speed.get(r['name'], float('nan')):.1f} ({r['images_per_s']:.0f}) | {fmt(min(min_entropy(e) for _, e in r['entropy'][1:]))} | "
                     f"{fmt(min_entropy(r['entropy'][-1][1]))} | {r['parameters']:,} |")
    lines += ["", "![loss and entropy curves](techniques_runs.png)", "",
              "## Entropy collapse at a high learning rate", "",
              "The default model and the sigma-Reparam model trained at high learning rates "
              f"({', '.join(f'{lr:g}' for lr in pairs)}; the preset's is {base['lr']:g}), {args.lr_steps} steps at "
              f"batch {args.batch}, warmup {round(args.lr_steps * args.warmup_fraction)} steps, everything else as above "
              "(including the grad clip of 1.0 and skipping non-finite steps, as the trainer does). **Spikes**: steps "
              "after warmup whose train bits/dim exceed the untrained model's (the first step's).", "",
              "| option | lr | test bits/dim | train bits/dim (end) | worst train bits/dim after warmup | spikes | "
              "non-finite steps | min entropy (nats) | entropy at end, min |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in [r for pair in pairs.values() for r in pair]:
        after = [b for s, b, _ in r["curve"] if s > r["warmup_steps"] and math.isfinite(b)]
        spikes = sum(b > r["curve"][0][1] for b in after)
        lines.append(f"| {r['name']} | {r['lr']:g} | {fmt(r['test_bpd'])} | {fmt(r['train_bpd_tail'])} | "
                     f"{max(after) if after else float('nan'):.4g} | {spikes} | {r['nonfinite_steps']}"
                     f"{' (stopped at step %d)' % r['diverged_at'] if r['diverged_at'] else ''} | "
                     f"{fmt(min(min_entropy(e) for _, e in r['entropy'][1:]))} | {fmt(min_entropy(r['entropy'][-1][1]))} |")
    lines += [""] + [f"![lr {lr:g}](techniques_collapse_lr{lr:g}.png)" for lr in pairs] + [""]
    lines += ["What these numbers say, and the options themselves: [transformer_options.md](transformer_options.md).", ""]
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "techniques.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="directory with the MNIST IDX files")
    p.add_argument("--steps", type=int, default=400, help="training steps of each option run")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--warmup-fraction", type=float, default=0.1)
    p.add_argument("--high-lr", type=float, nargs="+", default=[1e-2, 3e-2],
                   help="learning rates of the entropy-collapse pairs")
    p.add_argument("--lr-steps", type=int, default=300, help="training steps of each high-lr run")
    p.add_argument("--entropy-every", type=int, default=10)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--tail", type=int, default=50, help="train bits/dim: mean of this many last steps")
    p.add_argument("--speed-rounds", type=int, default=4, help="rounds of the interleaved throughput measurement")
    p.add_argument("--only", nargs="*", default=None, help="option runs to do (default: all)")
    p.add_argument("--out", default="runs/techniques", help="per-run JSON results (cached between invocations)")
    p.add_argument("--docs", default="docs")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    data = load_dataset("mnist", "train", data_dir=args.data_dir)
    test = load_dataset("mnist", "test", data_dir=args.data_dir)
    out, docs = Path(args.out), Path(args.docs)
    base_lr = get_preset("mnist").train.lr
    runs = [cached(out / f"{name}.json", lambda n=name: train_run(n, OPTIONS[n], base_lr, args.steps, args, data, test))
            for name in (args.only or OPTIONS)]
    pairs = {lr: [cached(out / f"{name}-lr{lr:g}.json",
                         lambda n=name, lr=lr: train_run(n, OPTIONS[n], lr, args.lr_steps, args, data, test))
                  for name in COLLAPSE_PAIR] for lr in args.high_lr}
    t1 = time.perf_counter()
    speed_file = out / f"speed-batch{args.batch}.json"
    if speed_file.is_file():
        speed = json.loads(speed_file.read_text())
    else:
        speed = interleaved_speed(args, data)
        speed["wall_s"] = round(time.perf_counter() - t1, 1)
        speed_file.write_text(json.dumps(speed) + "\n")
    print("images/s:", speed, flush=True)
    wall_s = sum(r["wall_s"] for r in runs + [r for pair in pairs.values() for r in pair]) + speed["wall_s"]
    docs.mkdir(parents=True, exist_ok=True)
    plot_runs(runs, docs / "techniques_runs.png", f"mnist, {args.steps} steps at batch {args.batch}")
    for lr, pair in pairs.items():
        plot_runs([runs[0]] + pair if runs[0]["name"] == "default" else pair, docs / f"techniques_collapse_lr{lr:g}.png",
                  f"default vs sigma-Reparam at lr {lr:g}", log=True)
    write_report(args, runs, pairs, speed, wall_s, docs)
    print(f"this invocation: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
