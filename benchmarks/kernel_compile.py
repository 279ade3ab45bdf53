"""Every Triton kernel configuration the host functions in kernels/ can choose, compiled ahead of
time for real NVIDIA GPU targets on this machine (no GPU needed: Triton's compiler, ptxas):
registers, spill bytes, stack, shared memory and the occupancy they allow.

    python benchmarks/kernel_compile.py                  # markdown: the worst case a kernel and target,
                                                         # then the table, one row a compile
    python benchmarks/kernel_compile.py --summary        # the worst case a kernel and target only
    python benchmarks/kernel_compile.py --json rows.json # the rows as JSON (tests/test_kernels_compile.py)
    python benchmarks/kernel_compile.py --targets 80,90,100,103,120,121 --dtypes fp32 --jobs 2

The configurations are those kernels.<op>.configs(N, D) returns (the same plan() the launch code
uses) over the shapes the seven scripts produce, deduplicated: gradient-penalty gradients of
batches of 2 to 1,024 images, 1 or 3 channels, sides h0 2^k (h0 in 4..7) from 16 to 256 (up to
16x3x256x256 and 1,024x1x28x28); pull-away codes of 2 to 1,024 rows of 64 to 65,536 features
(up to 1,024x1,024 and 64x65,536), D a multiple of 16 or not. Each compiles as Triton's JIT would
compile it at launch: pointers 16-byte aligned, integer arguments specialized as the JIT
specializes them (divisible by 16, equal to 1) unless the kernel opts out. Occupancy is what
CUDA's occupancy calculator gives: registers allocated per warp in units of 256, 1 KiB of shared
memory reserved per block, each target's per-SM limits.
"""
import argparse
import contextlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPS = ("gradient_penalty", "pullaway")
DTYPES = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}
# Per-SM limits (CUDA C++ Programming Guide, "Technical Specifications per Compute Capability"):
# max threads, max resident blocks, shared memory per SM and per block (opt-in), in bytes.
LIMITS = {
    80: dict(threads=2048, blocks=32, smem_sm=164 << 10, smem_block=163 << 10),   # A100
    86: dict(threads=1536, blocks=16, smem_sm=100 << 10, smem_block=99 << 10),    # RTX 30xx, A40, A10
    89: dict(threads=1536, blocks=24, smem_sm=100 << 10, smem_block=99 << 10),    # RTX 40xx, L4, L40
    90: dict(threads=2048, blocks=32, smem_sm=228 << 10, smem_block=227 << 10),   # H100, H200
    100: dict(threads=2048, blocks=32, smem_sm=228 << 10, smem_block=227 << 10),  # B200
    103: dict(threads=2048, blocks=32, smem_sm=228 << 10, smem_block=227 << 10),  # B300
    120: dict(threads=1536, blocks=32, smem_sm=100 << 10, smem_block=99 << 10),   # RTX 50xx, RTX PRO 6000
    121: dict(threads=1536, blocks=32, smem_sm=100 << 10, smem_block=99 << 10),   # DGX Spark
}
TARGETS = (80, 86, 89, 90, 100, 120)  # the default: sm_80 and up, one of each family
MAX_REGS, REGS_PER_SM, REG_UNIT, SMEM_RESERVED = 255, 65536, 256, 1024


def penalty_shapes():
    """(N, D): the gradients WGAN-GP and DRAGAN penalize, D = C x H x W."""
    sides = sorted({h0 << k for h0 in range(4, 8) for k in range(7) if 16 <= h0 << k <= 256})
    dims = sorted({c * h * w for c in (1, 3) for h in sides for w in sides})
    largest = max(16 * 3 * 256 * 256, 1024 * 1 * 28 * 28)
    return [(n, d) for n in range(2, 1025) for d in dims if n * d <= largest]


def pullaway_shapes():
    """(N, D): the codes EBGAN and BEGAN pull apart; D a multiple of 16 or not."""
    dims = sorted({1 << k for k in range(6, 17)} | {100, 1000, 4100})
    return [(n, d) for n in range(2, 1025) for d in dims if n * d <= 64 * 65536]


def _int_spec(kernel, name, value):
    """What Triton's JIT makes of an integer argument: ("i32" | "i64" | "constexpr", divisible by 16)."""
    param = kernel.params[kernel.arg_names.index(name)]
    if param.do_not_specialize:
        return "i32" if -2**31 <= value < 2**31 else "i64", False
    if value == 1:
        return "constexpr", False
    return "i32" if -2**31 <= value < 2**31 else "i64", value % 16 == 0


def configurations(modules):
    """The distinct compiles: {(op, kernel, meta, int specs): example (N, D)} over the scripts' shapes."""
    found = {}
    for op, shapes in (("gradient_penalty", penalty_shapes()), ("pullaway", pullaway_shapes())):
        module = modules[op]
        for n, d in shapes:
            for name, ints, meta in module.configs(n, d):
                kernel = getattr(module, name)
                specs = tuple(sorted((k, *_int_spec(kernel, k, v)) for k, v in ints.items()))
                key = (op, name, tuple(sorted(meta.items())), specs)
                found.setdefault(key, (n, d))
    return found


def describe(meta, specs):
    """'BLOCK_N=64 BLOCK_K=16, 8 warps; n_cols%16': the constexprs, warps and integer specializations."""
    meta = dict(meta)
    warps = meta.pop("num_warps")
    text = " ".join(f"{k}={v}" for k, v in meta.items()) + f", {warps} warp{'s' if warps > 1 else ''}"
    special = [f"{k}%16" if div else f"{k}=1" for k, kind, div in specs if div or kind == "constexpr"]
    return text + ("; " + " ".join(special) if special else "")


def compile_one(job):
    """Compile one kernel configuration for one target in this (worker) process; returns its row."""
    op, name, meta, specs, dtype, cc = job
    warnings.filterwarnings("ignore")  # Triton 3.9's FP-fusion default notice, once a process
    import importlib

    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    module = importlib.import_module(f"kernels.{op}")
    kernel = getattr(module, name)
    meta = dict(meta)
    warps = meta.pop("num_warps")
    types = module.SIGNATURES[name]
    if set(types) | set(meta) != set(kernel.arg_names) or set(types) & set(meta):
        raise RuntimeError(f"{name}: SIGNATURES and the meta-parameters do not name its arguments {kernel.arg_names}")
    signature, constexprs, attrs = {}, dict(meta), {}
    ints = {k: (kind, div) for k, kind, div in specs}
    for index, arg in enumerate(kernel.arg_names):
        kind = types.get(arg, "constexpr")
        if kind.startswith("*"):
            signature[arg] = "*" + DTYPES[dtype] if kind == "*T" else kind
            attrs[(index,)] = [["tt.divisibility", 16]]  # torch's allocations are 16-byte aligned
        elif arg in ints and ints[arg][0] == "constexpr":
            signature[arg], constexprs[arg] = "constexpr", 1
        else:
            signature[arg] = ints[arg][0] if arg in ints else kind
            if arg in ints and ints[arg][1]:
                attrs[(index,)] = [["tt.divisibility", 16]]
    src = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    knobs.nvidia.dump_ptxas_log = True
    log = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32), options={"num_warps": warps})
    seconds = time.perf_counter() - start
    log = log.getvalue()
    regs = re.search(r"Used (\d+) registers", log)
    frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if not (regs and frame):
        raise RuntimeError(f"no ptxas resource line for {name} on sm_{cc}:\n{log}")
    ptxas = re.search(r"^(ptxas\S*) info", log, re.M)
    row = dict(op=op, kernel=name, config=describe(job[2], specs), target=f"sm_{cc}", cc=cc, dtype=dtype,
               ptxas=ptxas.group(1) if ptxas else "ptxas",
               warps=warps, registers=int(regs.group(1)), stack=int(frame.group(1)),
               spill_stores=int(frame.group(2)), spill_loads=int(frame.group(3)),
               shared=compiled.metadata.shared, seconds=round(seconds, 2))
    row.update(occupancy(row["registers"], row["shared"], warps, cc))
    return row


def occupancy(registers, shared, warps, cc):
    """Resident blocks per SM and the fraction of the SM's warps they fill."""
    lim = LIMITS[cc]
    regs_per_warp = -(-registers * 32 // REG_UNIT) * REG_UNIT
    by_regs = REGS_PER_SM // regs_per_warp // warps
    by_threads = lim["threads"] // (32 * warps)
    by_smem = lim["smem_sm"] // (shared + SMEM_RESERVED)
    blocks = min(lim["blocks"], by_regs, by_threads, by_smem)
    return dict(blocks_per_sm=blocks, occupancy=round(blocks * warps * 32 / lim["threads"], 3),
                smem_limit=lim["smem_block"])


def problems(row):
    """What is wrong with a compiled configuration (empty: it compiles clean)."""
    out = []
    if row["spill_stores"] or row["spill_loads"] or row["stack"]:
        out.append(f"spills {row['spill_stores']} B stored, {row['spill_loads']} B loaded, {row['stack']} B stack")
    if row["registers"] > MAX_REGS:
        out.append(f"{row['registers']} registers")
    if row["shared"] > row["smem_limit"]:
        out.append(f"{row['shared']} B shared memory > {row['smem_limit']}")
    if row["blocks_per_sm"] < 1:
        out.append("no block fits an SM")
    return out


def compile_all(targets=TARGETS, dtypes=tuple(DTYPES), jobs=2, kernels=None):
    """Every configuration x target x dtype (dtype only where a kernel takes the input's dtype)."""
    os.environ["TRITON_INTERPRET"] = "0"  # compile, never interpret: before kernels is imported
    cache = tempfile.mkdtemp(prefix="triton-aot-")
    os.environ["TRITON_CACHE_DIR"] = cache  # a fresh cache: every compile runs ptxas and logs
    sys.path.insert(0, str(ROOT))
    import importlib
    modules = {op: importlib.import_module(f"kernels.{op}") for op in OPS}
    if getattr(modules["pullaway"], "INTERPRETED", False) or type(modules["pullaway"]._pullaway_fwd_kernel).__name__ != "JITFunction":
        raise RuntimeError("kernels was imported under TRITON_INTERPRET=1: run this in a fresh process")
    found = configurations(modules)
    work = []
    for (op, name, meta, specs), shape in found.items():
        if kernels and not any(k in name for k in kernels):
            continue
        typed = any(t == "*T" for t in modules[op].SIGNATURES[name].values())
        for dtype in (dtypes if typed else ("fp32",)):
            for cc in targets:
                work.append(((op, name, meta, specs, dtype, cc), shape))
    work.sort(key=lambda w: (w[0][0], w[0][1], w[0][2], w[0][4], w[0][5]))
    try:
        if jobs > 1:
            import multiprocessing
            with multiprocessing.get_context("spawn").Pool(jobs) as pool:
                rows = pool.map(compile_one, [job for job, _ in work], chunksize=1)
        else:
            rows = [compile_one(job) for job, _ in work]
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    for row, (_, shape) in zip(rows, work):
        row["example"] = "x".join(map(str, shape))
        row["problems"] = problems(row)
    return rows


COLUMNS = [("kernel", "kernel"), ("config", "configuration"), ("example", "e.g. N x D"), ("target", "target"),
           ("dtype", "dtype"), ("registers", "registers"), ("spills", "spill bytes (st/ld)"), ("stack", "stack B"),
           ("shared", "shared B"), ("blocks_per_sm", "blocks/SM"), ("occupancy", "occupancy")]


def markdown(rows):
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |",
             "|" + "|".join("---" if i < 5 else "---:" for i in range(len(COLUMNS))) + "|"]
    for r in rows:
        cells = dict(r, spills=f"{r['spill_stores']}/{r['spill_loads']}", occupancy=f"{100 * r['occupancy']:.0f}%",
                     kernel=r["kernel"].strip("_"))
        lines.append("| " + " | ".join(str(cells[k]) for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def summary(rows):
    """One row per kernel and target: the most registers and stack over its configurations and dtypes."""
    groups = {}
    for r in rows:
        groups.setdefault((r["kernel"], r["cc"]), []).append(r)
    lines = ["| kernel | target | configurations x dtypes | registers (max) | spill bytes (max) | shared B (max) "
             "| occupancy (min) |", "|---|---|---:|---:|---:|---:|---:|"]
    for (kernel, cc), rs in groups.items():
        lines.append(f"| {kernel.strip('_')} | sm_{cc} | {len(rs)} | {max(r['registers'] for r in rs)} "
                     f"| {max(r['spill_stores'] + r['spill_loads'] for r in rs)} | {max(r['shared'] for r in rs)} "
                     f"| {100 * min(r['occupancy'] for r in rs):.0f}% |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default=",".join(map(str, TARGETS)),
                   help=f"compute capabilities, of {sorted(LIMITS)} (default: %(default)s)")
    p.add_argument("--dtypes", default=",".join(DTYPES), help="input dtypes (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compiler processes (default: %(default)s)")
    p.add_argument("--kernels", help="only kernels whose names contain one of these, comma-separated "
                   "(e.g. pullaway_fwd; default: all)")
    p.add_argument("--summary", action="store_true", help="only the worst case a kernel and target, not every compile")
    p.add_argument("--json", metavar="FILE", help="write the rows as JSON to FILE")
    args = p.parse_args()
    try:
        targets = [int(t) for t in args.targets.split(",")]
        dtypes = args.dtypes.split(",")
        bad = [t for t in targets if t not in LIMITS] + [d for d in dtypes if d not in DTYPES]
        if bad:
            raise ValueError(f"unknown target or dtype: {', '.join(map(str, bad))}")
    except ValueError as e:
        print(f"kernel_compile.py: {e}", file=sys.stderr)
        return 2
    try:
        import triton
    except ImportError:
        print("kernel_compile.py: triton is not installed", file=sys.stderr)
        return 2
    start = time.perf_counter()
    rows = compile_all(targets, dtypes, args.jobs, args.kernels.split(",") if args.kernels else None)
    took = time.perf_counter() - start
    if args.json:
        Path(args.json).write_text(json.dumps(dict(seconds=round(took, 1), triton=triton.__version__, rows=rows)))
    bad = [r for r in rows if r["problems"]]
    tools = {}
    for r in rows:
        tools.setdefault(r["ptxas"], set()).add(r["target"])
    tools = "; ".join(f"{tool} for {', '.join(sorted(ts, key=lambda t: int(t[3:])))}" for tool, ts in tools.items())
    print(f"{len(rows)} compiles ({len({(r['kernel'], r['config']) for r in rows})} configurations x targets "
          f"{', '.join(f'sm_{t}' for t in targets)} x dtypes) in {took:.0f} s with triton {triton.__version__} "
          f"({tools}); {len(bad)} with spills or over a limit")
    print()
    print(summary(rows))
    if not args.summary:
        print()
        print(markdown(rows))
    for r in bad:
        print(f"{r['kernel']} [{r['config']}] {r['target']} {r['dtype']}: {'; '.join(r['problems'])}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
