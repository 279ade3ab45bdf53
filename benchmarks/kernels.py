"""Benchmark of kernels/: forward + backward time of the Triton kernels, of the eager PyTorch
reference and of torch.compile of the reference, and the Triton kernels' memory bandwidth
against the GPU's.

    python benchmarks/kernels.py                      # on a CUDA machine: a table
    python benchmarks/kernels.py --markdown           # the same as a markdown table
    python benchmarks/kernels.py --peak-gbs 3350      # the bandwidth to compare against
    python benchmarks/kernels.py --cpu-check          # no GPU: every path on tiny shapes under
                                                      # Triton's CPU interpreter (times meaningless)

Bytes counted per forward + backward (the least traffic the op needs, so GB/s is a lower bound):
gradient penalty 3 N D (read g twice, write dg); pull-away 3 N D plus the N x N fp32 cosine
matrix written and read. Pull-away at large N is compute-bound (4 N^2 D flops), so its GB/s is
low by nature. "err" is max |Triton - eager| / max |eager| over the loss and the gradient.
"""
import argparse
import os
import sys
import time
from pathlib import Path

# (substrings of torch.cuda.get_device_name(), peak memory bandwidth in GB/s from the spec sheet)
PEAK_GBS = [(("H200",), 4800), (("H100", "PCIe"), 2000), (("H100", "HBM3"), 3350), (("H100", "SXM"), 3350),
            (("A100", "SXM", "80GB"), 2039)]
PENALTY_SHAPES = [(n, 3 * s * s) for n in (64, 128, 256) for s in (32, 64, 128, 256)]  # (N, D): batches of RGB images
PULLAWAY_SHAPES = [(n, d) for n in (64, 256, 1024) for d in (64, 256, 1024)]  # (N, D): batches of embeddings
CPU_PENALTY_SHAPES = [(4, 3 * 8 * 8), (3, 70_000)]
CPU_PULLAWAY_SHAPES = [(5, 16), (130, 33)]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated input dtypes (default: %(default)s)")
    p.add_argument("--peak-gbs", type=float, help="peak memory bandwidth in GB/s (default: from the device name, "
                   "else measured with a large device-to-device copy)")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--cpu-check", action="store_true", help="no GPU: run every path once on tiny CPU shapes")
    return p.parse_args()


def main():
    args = parse_args()
    if args.cpu_check:
        os.environ["TRITON_INTERPRET"] = "1"  # must be set before kernels (and its @triton.jit) is imported
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch
    import triton.testing
    import kernels

    cuda = not args.cpu_check
    if cuda and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --cpu-check to check the script on a CPU")
    device = "cuda" if cuda else "cpu"

    def bench(fn):
        """Milliseconds per call: do_bench's median on CUDA; on CPU, a mean of 3 after a warm-up."""
        if cuda:
            return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
        fn()
        start = time.perf_counter()
        for _ in range(3):
            fn()
        return (time.perf_counter() - start) / 3 * 1e3

    def peak_gbs():
        if args.peak_gbs:
            return args.peak_gbs, "--peak-gbs"
        if not cuda:
            return None, "no GPU"
        name = torch.cuda.get_device_name()
        for keys, gbs in PEAK_GBS:
            if all(k.lower() in name.lower() for k in keys):
                return gbs, f"{name}, spec sheet"
        x = torch.empty(1 << 30, dtype=torch.uint8, device=device)  # 1 GiB
        y = torch.empty_like(x)
        return 2 * x.numel() / bench(lambda: y.copy_(x)) / 1e6, f"{name}, measured copy"

    def step(fn, x):
        """One forward and backward of fn at the leaf x; returns the loss and the gradient."""
        x.grad = None
        loss = fn(x)
        loss.backward()
        return [loss.detach().float(), x.grad.float()]

    def run(op, fn, reference, shape, dtype, nbytes):
        torch.manual_seed(0)
        # rows of norm about 2: a norm near the target 1 would make (||g|| - 1) ill-conditioned
        x = (2 * torch.randn(shape, device=device) / shape[1] ** 0.5).to(dtype).requires_grad_()
        os.environ["GAN_KERNELS"] = "triton"
        out = step(fn, x)
        triton_ms = bench(lambda: step(fn, x))
        os.environ["GAN_KERNELS"] = "reference"
        ref = step(fn, x)
        eager_ms = bench(lambda: step(fn, x))
        torch._dynamo.reset()  # a fresh compile per shape, never the recompile limit's eager fallback
        compiled = torch.compile(reference)
        compiled_ms = bench(lambda: step(compiled, x))
        err = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() for a, b in zip(out, ref))
        gbs = nbytes / (triton_ms * 1e-3) / 1e9
        return [op, "x".join(map(str, shape)), str(dtype).removeprefix("torch."),
                f"{triton_ms * 1e3:.1f}", f"{eager_ms * 1e3:.1f}", f"{compiled_ms * 1e3:.1f}",
                f"{eager_ms / triton_ms:.2f}x", f"{compiled_ms / triton_ms:.2f}x",
                f"{gbs:.0f}", f"{100 * gbs / peak:.0f}%" if peak else "-", f"{err:.1e}"]

    peak, source = peak_gbs()
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    rows = []
    for dtype in dtypes:
        size = torch.finfo(dtype).bits // 8
        for n, d in CPU_PENALTY_SHAPES if args.cpu_check else PENALTY_SHAPES:
            rows.append(run("gradient_penalty", kernels.gradient_penalty, kernels.gradient_penalty_reference,
                            (n, d), dtype, 3 * n * d * size))
        for n, d in CPU_PULLAWAY_SHAPES if args.cpu_check else PULLAWAY_SHAPES:
            rows.append(run("pullaway", kernels.pullaway, kernels.pullaway_reference,
                            (n, d), dtype, 3 * n * d * size + 8 * n * n))

    header = ["op", "shape", "dtype", "triton us", "eager us", "compile us", "vs eager", "vs compile",
              "triton GB/s", "of peak", "err"]
    print(f"forward + backward; peak bandwidth {f'{peak:.0f} GB/s' if peak else 'n/a'} ({source}); "
          f"torch {torch.__version__}, triton {triton.__version__}")
    if args.cpu_check:
        print("--cpu-check: Triton's CPU interpreter on tiny shapes; the times are meaningless")
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))


if __name__ == "__main__":
    main()
