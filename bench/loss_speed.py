"""Speed and peak memory of the fused distillation loss against the full-logit reference, on CPU,
side by side in one run.

    python bench/loss_speed.py                 # the issue's shapes (minutes: V = 128,256, H = 2,048)
    python bench/loss_speed.py --small         # tiny shapes: a smoke run in seconds
    python bench/loss_speed.py --before OLD.py # adds the fused loss of another losses.py (e.g. the
                                               # previous commit's, `git show HEAD:distill/losses.py`)
    python bench/loss_speed.py --cache-dtypes  # error of fp16 / bf16 cached log-probabilities

fp32, forward + backward through the student's hidden states and head, ``--threads`` torch
threads (default 2). Every measurement runs in a fresh process, so its peak RSS growth (VmHWM
after minus VmRSS before, inputs already made) is its own; the cases of one shape run
interleaved, ``--repeats`` times each (default 3), and the table shows the median time and the
largest peak. Speed ratio = reference seconds / fused seconds of each interleaved pair (above 1:
the fused loss is faster), as the median of the pairs with their min-max; memory = fused peak /
reference peak.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from loss_memory import proc_status_mib  # noqa: E402 - the sibling bench's /proc reader

# (vocab, tokens, hidden, loss)
SHAPES = {"full": [(128256, 2048, 2048, "forward_kl"), (128256, 2048, 2048, "jsd"),
                   (128256, 512, 2048, "forward_kl"), (128256, 512, 512, "forward_kl"),
                   (32000, 512, 2048, "forward_kl")],
          "small": [(3000, 64, 64, "forward_kl"), (3000, 64, 64, "jsd")]}


class Shape(NamedTuple):
    vocab: int
    tokens: int
    hidden: int
    loss: str


def _load(path: str):
    spec = importlib.util.spec_from_file_location("losses_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def child(kind: str, shape: Shape, threads: int, before: str | None) -> None:
    """In a fresh process: one forward + backward of ``kind`` ("fused", "reference" or "before");
    prints its wall seconds and peak RSS growth (MiB) as JSON."""
    import torch

    torch.set_num_threads(threads)
    from distill.train import losses

    module = _load(before) if kind == "before" else losses
    torch.manual_seed(0)
    vocab, tokens, hidden = shape.vocab, shape.tokens, shape.hidden
    h_s = torch.randn(tokens, hidden, requires_grad=True)
    w_s = (torch.randn(vocab, hidden) * hidden ** -0.5).requires_grad_()
    h_t, w_t = torch.randn(tokens, hidden), torch.randn(vocab, hidden) * hidden ** -0.5
    labels = torch.randint(0, vocab, (tokens,))
    spec = module.LossSpec(kind=shape.loss)
    before_mib, start = proc_status_mib("VmRSS"), time.perf_counter()
    if kind == "reference":
        loss = losses.reference_distill_loss(h_s @ w_s.T, h_t @ w_t.T, labels, spec, tokens)
    else:
        loss = module.fused_distill_loss(h_s, w_s, h_t, w_t, labels, spec, tokens)
    loss.backward()
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "mib": proc_status_mib("VmHWM") - before_mib, "loss": loss.item(),
                      "grad_w_norm": w_s.grad.norm().item()}))


def run_child(kind: str, shape: Shape, threads: int, before: str | None) -> dict:
    args = [sys.executable, __file__, "--child", kind, *map(str, shape), "--threads", str(threads)]
    if before:
        args += ["--before", before]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def ratio(a: float, b: float, digits: int = 2) -> str:
    """a / b as "N.NNx", or "n/a" when b is not positive (too small to measure)."""
    return f"{a / b:.{digits}f}x" if b > 0 else "n/a"


def measure(shape: Shape, kinds: list[str], repeats: int, threads: int, before: str | None) -> dict:
    """{kind: (median seconds, max MiB, [seconds...], loss)}: the kinds interleaved, ``repeats`` rounds."""
    runs = {kind: [] for kind in kinds}
    for _ in range(repeats):
        for kind in kinds:
            runs[kind].append(run_child(kind, shape, threads, before))
    return {kind: (statistics.median(r["seconds"] for r in results), max(r["mib"] for r in results),
                   [r["seconds"] for r in results], results[0]["loss"]) for kind, results in runs.items()}


def zipf_logits(tokens: int, vocab: int, seed: int = 0):
    """Teacher-like logits [tokens x vocab] in fp64: per token a Zipf law over a random order of
    the vocabulary, log p(rank r) = -a log r + noise, with exponent a drawn from U(1.0, 2.5)
    (flat to peaked next-token distributions) and N(0, 0.5^2) noise per logit."""
    import torch

    g = torch.Generator().manual_seed(seed)
    log_rank = torch.log(torch.arange(1, vocab + 1, dtype=torch.float64))
    exponent = 1.0 + 1.5 * torch.rand(tokens, 1, generator=g, dtype=torch.float64)
    logits = -exponent * log_rank + 0.5 * torch.randn(tokens, vocab, generator=g, dtype=torch.float64)
    order = torch.argsort(torch.rand(tokens, vocab, generator=g), dim=1)
    return torch.gather(logits, 1, order)


def cache_dtypes(tokens: int, vocab: int, k: int) -> None:
    """Error of the stored top-k log-probabilities in fp16 and bf16 against fp32 storage and the
    exact (fp64) values, and its effect on the cached-target loss and gradient."""
    import torch
    import torch.nn.functional as F

    from distill.train.losses import LossSpec
    from distill.train.teacher_cache import reference_cached_loss, topk_targets

    z_t = zipf_logits(tokens, vocab)
    log_q = F.log_softmax(z_t, dim=-1)
    entropy = -(log_q.exp() * log_q).sum(-1)
    top1 = log_q.max(-1).values.exp()
    exact = topk_targets(z_t, k, 1.0, torch.float64)
    z_s = z_t + torch.randn(tokens, vocab, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = torch.randint(0, vocab, (tokens,), generator=torch.Generator().manual_seed(2))
    spec = LossSpec("forward_kl")
    results = {}
    for name, dtype in (("float64", torch.float64), ("float32", torch.float32), ("float16", torch.float16),
                        ("bfloat16", torch.bfloat16)):
        stored = topk_targets(z_t, k, 1.0, dtype)
        leaf = z_s.clone().requires_grad_()
        loss = reference_cached_loss(leaf, stored, labels, spec, tokens)
        (grad,) = torch.autograd.grad(loss, leaf)
        results[name] = (stored, loss.item(), grad)
    print(f"{tokens} tokens of Zipf-law teacher logits, V = {vocab}, top-{k}: entropy {entropy.min():.2f}.."
          f"{entropy.max():.2f} nats (mean {entropy.mean():.2f}), top-1 probability {top1.min():.3f}.."
          f"{top1.max():.3f} (mean {top1.mean():.3f}); the k-th log-probability spans "
          f"{exact.logprobs[:, -1].min():.1f}..{exact.logprobs[:, -1].max():.1f}; tail mass mean "
          f"{exact.tail.exp().mean():.3f}. Student logits = teacher's + N(0, 1).\n")
    print("| log-prob dtype | max abs error of log q | mean abs error | max rel error of q | "
          "max abs error of sum q + tail | rel error of the loss | rel error of the gradient |")
    print("|---|---|---|---|---|---|---|")
    _, want_loss, want_grad = results["float64"]
    for name in ("float32", "float16", "bfloat16"):
        stored, loss, grad = results[name]
        error = (stored.logprobs.double() - exact.logprobs).abs()
        q_error = (stored.logprobs.double().exp() / exact.logprobs.exp() - 1).abs().max()
        mass = (stored.logprobs.double().exp().sum(-1) + stored.tail.double().exp() - 1).abs().max()
        print(f"| {name} | {error.max():.2e} | {error.mean():.2e} | {q_error:.2e} | {mass:.2e} | "
              f"{abs(loss / want_loss - 1):.2e} | {((grad - want_grad).norm() / want_grad.norm()):.2e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny shapes: a smoke run in seconds")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--before", help="a losses.py whose fused loss is measured too (column 'before')")
    parser.add_argument("--only", type=int, nargs="*", help="indices of the shapes to run (default: all)")
    parser.add_argument("--cache-dtypes", action="store_true",
                        help="instead of the loss table: the error of fp16 / bf16 cached log-probabilities")
    parser.add_argument("--child", nargs=5, metavar=("KIND", "VOCAB", "TOKENS", "HIDDEN", "LOSS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    before = str(Path(args.before).resolve()) if args.before else None
    if args.child:
        kind, *numbers, loss = args.child
        child(kind, Shape(*map(int, numbers), loss), args.threads, before)
        return
    if args.cache_dtypes:
        cache_dtypes(*((64, 3000, 16) if args.small else (256, 128256, 64)))
        return
    shapes = [Shape(*s) for s in SHAPES["small" if args.small else "full"]]
    if args.only:
        shapes = [shapes[i] for i in args.only]
    kinds = ["fused", "reference"] + (["before"] if before else [])
    import torch

    print(f"torch {torch.__version__}, {args.threads} threads, fp32, forward + backward, median of "
          f"{args.repeats} (time) and largest (peak RSS growth), each run a fresh process\n")
    header = ("| V | tokens | H | loss | fused (s) | reference (s) | speed ratio (pairs: median, min-max) | "
              "fused (MiB) | reference (MiB) | memory |")
    extra = " before (s) | before speed ratio | before (MiB) |" if before else ""
    print(header + extra)
    print("|---" * (10 + (3 if before else 0)) + "|")
    results = []
    for shape in shapes:
        got = measure(shape, kinds, args.repeats, args.threads, before)
        (fs, fm, fall, floss), (rs, rm, rall, rloss) = got["fused"], got["reference"]
        assert abs(floss - rloss) <= 1e-3 * abs(rloss) + 1e-6, (shape, floss, rloss)  # same loss
        pairs = [r / f for f, r in zip(fall, rall) if f > 0]  # each repeat ran fused then reference: one pair
        spread = f"{statistics.median(pairs):.2f}x ({min(pairs):.2f}-{max(pairs):.2f})" if pairs else "n/a"
        row = (f"| {shape.vocab} | {shape.tokens} | {shape.hidden} | {shape.loss} | {fs:.2f} | {rs:.2f} | "
               f"{spread} | {fm:.0f} | {rm:.0f} | {ratio(fm, rm)} |")
        if before:
            bs, bm, _, _ = got["before"]
            row += f" {bs:.2f} | {ratio(rs, bs)} | {bm:.0f} |"
        print(row, flush=True)
        results.append((shape, fs, rs, fm, rm, fall, rall))
    print()
    for shape, fs, rs, fm, rm, fall, rall in results:
        print(f"V={shape.vocab} tokens={shape.tokens} H={shape.hidden} {shape.loss}: fused runs "
              f"{', '.join(f'{s:.2f}' for s in fall)} s, reference runs {', '.join(f'{s:.2f}' for s in rall)} s")


if __name__ == "__main__":
    main()
