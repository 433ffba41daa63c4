"""Forward+backward time and peak memory of the online KD loss against baselines.

Every method computes the same objective, forward KL(P_teacher ‖ Q_student) at T = 1 averaged over
rows, with the student hidden states and lm_head weight requiring grad and the teacher frozen:

    ours         distill_plugin.losses.online_kd_loss (chunked fused-linear, autograd per chunk)
    ours_eval    the same under torch.no_grad: an evaluation step, values only (opt-in)
    naive        full [rows, V] logits for both models, log_softmax in fp32, F.kl_div, autograd
    liger        liger_kernel.chunked_loss.LigerFusedLinearJSDLoss(beta=0, weight_hard_loss=0,
                 weight_soft_loss=1); beta = 0 is forward KL in liger 0.8.1 (beta = 1 is reverse KL)
    liger_ops    liger_kernel.transformers.LigerFusedLinearJSD(jsd_beta=0) (Triton: CUDA only;
                 not in the default set)
    floor        the four GEMMs alone in the compute dtype: teacher logits h_t W_tᵀ, student logits
                 h_s W_sᵀ, grad-input g W_s, grad-weight gᵀ h_s (g = the student-logit buffer)

Each (method, rows) case runs in a fresh subprocess (``--no-isolate`` to run in-process), so an OOM
or a CUDA fault in one case cannot poison the next, and CPU peak memory can be read from the process.

Time: median over ``--repeats`` of one forward+backward, after ``--warmup`` runs (CUDA events on
GPU; perf_counter on CPU). Peak memory: CUDA ``max_memory_allocated`` minus the allocation after the
inputs were built (so it counts the loss's buffers and the returned gradients); CPU: peak RSS growth
(VmHWM − VmRSS after resetting the high-water mark via /proc/self/clear_refs) in the fresh process.
Loss / grad rel-diff: against the first ``ours`` row of the same size (loss: |Δ|/|ref|; grad:
relative L2 error of 256 sampled rows of each of dL/dh_s and dL/dW_s, the larger of the two).

    python benchmarks/bench_kd_loss.py --device cuda          # the issue's H100/H200 setting
    python benchmarks/bench_kd_loss.py --device cpu --dtype fp32 --rows 512 2048 --vocab 32000 \\
        --student-hidden 256 --teacher-hidden 512 --chunk-size 128 256 512
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

try:
    import distill_plugin  # noqa: F401
except ImportError:  # not installed: use the checkout this script lives in
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEFAULT_METHODS = ["ours", "naive", "liger", "floor"]
ALL_METHODS = DEFAULT_METHODS + ["ours_eval", "liger_ops"]
FINGERPRINT_ROWS = 256
GIB = 1024**3


# ---------------------------------------------------------------------------------------------
# inputs


def make_inputs(rows, a):
    """Deterministic inputs (same seed in every subprocess). Logits have std ≈ ``--logit-std``."""
    dev, dt = torch.device(a.device), DTYPES[a.dtype]
    g = torch.Generator(device=dev).manual_seed(0)
    s = a.logit_std

    def randn(*shape, std=1.0):
        x = torch.randn(*shape, generator=g, device=dev, dtype=dt)
        return x.mul_(std) if std != 1.0 else x

    w_s = randn(a.vocab, a.student_hidden, std=s / a.student_hidden**0.5).requires_grad_(True)
    w_t = randn(a.vocab, a.teacher_hidden, std=s / a.teacher_hidden**0.5)
    h_s = randn(rows, a.student_hidden).requires_grad_(True)
    h_t = randn(rows, a.teacher_hidden)
    labels = torch.randint(0, a.vocab, (rows,), generator=g, device=dev)
    return h_s, w_s, h_t, w_t, labels


# ---------------------------------------------------------------------------------------------
# methods: each returns a closure that runs one forward+backward and returns the (detached) loss


def method_ours(x, a, chunk):
    from distill_plugin.losses import KDSettings, online_kd_loss

    h_s, w_s, h_t, w_t, _ = x
    settings = KDSettings(divergence="forward_kl", temperature=1.0, kd_weight=1.0, ce_weight=0.0)

    def step():
        out = online_kd_loss(h_s, w_s, h_t, w_t, settings=settings, chunk_size=chunk)
        out.loss.backward()
        return out.loss.detach()

    return step


def method_ours_eval(x, a, chunk):
    """An evaluation step: the same loss under ``torch.no_grad`` (values only, no gradient work)."""
    from distill_plugin.losses import KDSettings, online_kd_loss

    h_s, w_s, h_t, w_t, _ = x
    settings = KDSettings(divergence="forward_kl", temperature=1.0, kd_weight=1.0, ce_weight=0.0)

    def step():
        with torch.no_grad():
            return online_kd_loss(h_s, w_s, h_t, w_t, settings=settings, chunk_size=chunk).loss

    return step


def method_naive(x, a, chunk):
    h_s, w_s, h_t, w_t, _ = x

    def step():
        with torch.no_grad():
            log_p = F.log_softmax((h_t @ w_t.t()).float(), dim=-1)
        log_q = F.log_softmax((h_s @ w_s.t()).float(), dim=-1)
        loss = F.kl_div(log_q, log_p, reduction="sum", log_target=True) / h_s.shape[0]
        loss.backward()
        return loss.detach()

    return step


def method_liger(x, a, chunk):
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    h_s, w_s, h_t, w_t, labels = x
    compiled = {"on": True, "off": False, "auto": a.device.startswith("cuda")}[a.liger_compile]
    fn = LigerFusedLinearJSDLoss(
        weight_hard_loss=0.0, weight_soft_loss=1.0, beta=0.0, temperature=1.0,
        compiled=compiled, chunk_size=a.liger_chunk_size,
    )  # fmt: skip

    def step():
        loss = fn(h_s, w_s, h_t, w_t, labels)  # labels are all valid: only the CE (weight 0) uses them
        loss.backward()
        return loss.detach()

    return step


def method_liger_ops(x, a, chunk):
    from liger_kernel.transformers import LigerFusedLinearJSD

    h_s, w_s, h_t, w_t, _ = x
    fn = LigerFusedLinearJSD(jsd_beta=0.0, temperature=1.0)

    def step():
        loss = fn(h_s, w_s, h_t, w_t, None)
        loss.backward()
        return loss.detach()

    return step


def method_floor(x, a, chunk):
    """The four GEMMs, chunk-free (``chunk`` falsy) or over row chunks with grad-weight addmm_."""
    h_s, w_s, h_t, w_t, _ = (t.detach() for t in x)
    rows = h_s.shape[0]

    def step():
        if not chunk:
            z_t = h_t @ w_t.t()
            z_s = h_s @ w_s.t()  # stands in for g = dL/dz_s (same shape and dtype)
            g_h = z_s @ w_s
            g_w = z_s.t() @ h_s
            del z_t
            return torch.zeros((), device=h_s.device)
        g_h = torch.empty_like(h_s)
        g_w = torch.zeros_like(w_s)
        for s in range(0, rows, chunk):
            z_t = h_t[s : s + chunk] @ w_t.t()
            z_s = h_s[s : s + chunk] @ w_s.t()
            torch.mm(z_s, w_s, out=g_h[s : s + chunk])
            g_w.addmm_(z_s.t(), h_s[s : s + chunk])
            del z_t, z_s
        return torch.zeros((), device=h_s.device)

    return step


METHODS = {
    "ours": method_ours,
    "ours_eval": method_ours_eval,
    "naive": method_naive,
    "liger": method_liger,
    "liger_ops": method_liger_ops,
    "floor": method_floor,
}


# ---------------------------------------------------------------------------------------------
# one case


def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


class _PeakTensorBytes:
    """Peak bytes of live tensor storages created inside the block (CPU stand-in for the CUDA
    allocator's max_memory_allocated: counts every tensor an op returns, not library workspaces)."""

    def __enter__(self):
        import weakref

        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self
        self.live = self.peak = 0
        self.seen: set[int] = set()

        def free(key, n):
            tracker.seen.discard(key)
            tracker.live -= n

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor) and t.device.type != "meta":
                        st = t.untyped_storage()
                        key, n = st.data_ptr(), st.nbytes()
                        if n and key not in tracker.seen:
                            tracker.seen.add(key)
                            tracker.live += n
                            tracker.peak = max(tracker.peak, tracker.live)
                            weakref.finalize(st, free, key, n)
                return out

        self.mode = Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


def _short_error(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"error: {type(e).__name__}: {msg[:100]}"


def run_case(method, rows, chunk, a, fingerprint_path=None):
    """Run one (method, rows, chunk) case in this process; returns a JSON-able dict."""
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    res = {"method": method, "rows": rows, "chunk": chunk, "status": "ok"}
    x = make_inputs(rows, a)
    try:
        step = METHODS[method](x, a, chunk)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # reset VmHWM to the current RSS
                base = _rss_kib("VmRSS")
            except OSError:
                base = None
        times = []
        loss = None
        for i in range(a.warmup + a.repeats):
            x[0].grad = x[1].grad = None
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                loss = step()
                end.record()
                torch.cuda.synchronize()
                ms = start.elapsed_time(end)
            else:
                clock = time.process_time if a.cpu_clock == "process" else time.perf_counter
                t0 = clock()
                loss = step()
                ms = (clock() - t0) * 1e3
            if i >= a.warmup:
                times.append(ms)
        res["time_ms"] = statistics.median(times)
        if cuda:
            res["peak_gib"] = (torch.cuda.max_memory_allocated() - base) / GIB
        elif a.cpu_mem == "rss" and base is not None and a.isolate:
            res["peak_gib"] = (_rss_kib("VmHWM") - base) / 1024**2
        elif a.cpu_mem == "tensors":
            x[0].grad = x[1].grad = None
            with _PeakTensorBytes() as tracked:
                step()
            res["peak_gib"] = tracked.peak / GIB
        if method != "floor":
            res["loss"] = float(loss)
            if fingerprint_path and x[0].grad is not None and x[1].grad is not None:
                g = torch.Generator().manual_seed(1)
                ih = torch.randperm(rows, generator=g)[:FINGERPRINT_ROWS].to(dev)
                iw = torch.randperm(a.vocab, generator=g)[:FINGERPRINT_ROWS].to(dev)
                torch.save({"h": x[0].grad[ih].float().cpu(), "w": x[1].grad[iw].float().cpu()}, fingerprint_path)
                res["fingerprint"] = str(fingerprint_path)
    except torch.OutOfMemoryError:
        res["status"] = "OOM"
    except Exception as e:  # noqa: BLE001 - a benchmark row, not a crash
        res["status"] = _short_error(e)
    return res


# ---------------------------------------------------------------------------------------------
# driver


def case_list(a):
    chunks = [None if c in ("auto", "0") else int(c) for c in a.chunk_size]
    cases = []
    for rows in a.rows:
        for m in a.methods:
            if m in ("ours", "ours_eval"):
                cases += [(m, rows, c) for c in chunks]
            elif m == "floor":
                cases.append((m, rows, a.floor_chunk or None))
            else:
                cases.append((m, rows, None))
    return cases


def run_isolated(case, a, tmp):
    method, rows, chunk = case
    fp = Path(tmp) / f"{method}-{rows}-{chunk}.pt"
    cmd = [sys.executable, __file__, "--_case", json.dumps([method, rows, chunk, str(fp)])] + a.passthrough
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.case_timeout)
    except subprocess.TimeoutExpired:
        return {"method": method, "rows": rows, "chunk": chunk, "status": f"timeout ({a.case_timeout}s)"}
    for line in reversed(p.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    err = (p.stderr.strip().splitlines() or ["?"])[-1][:100]
    why = "killed (host OOM?)" if p.returncode in (-9, 137) else f"crash rc={p.returncode}"
    return {"method": method, "rows": rows, "chunk": chunk, "status": f"{why}: {err}"}


def label(r, a):
    m, c = r["method"], r["chunk"]
    if m in ("ours", "ours_eval"):
        from distill_plugin.losses.chunked import auto_chunk_size
        from distill_plugin.losses.compiled import COMPILED_CHUNK_ELEMENTS, use_compiled

        compiled = use_compiled(torch.empty(0, device=a.device))
        mode = ", compiled" if compiled else ""
        auto = auto_chunk_size(a.vocab, COMPILED_CHUNK_ELEMENTS) if compiled else auto_chunk_size(a.vocab)
        return f"{m} (chunk {c}{mode})" if c else f"{m} (chunk {auto}, auto{mode})"
    if m == "floor":
        return f"floor (chunked {c})" if c else "floor (chunk-free)"
    if m == "liger":
        return f"liger (chunk {a.liger_chunk_size})"
    return m


def rel_grad_diff(r, ref):
    if "fingerprint" not in r or "fingerprint" not in ref:
        return None
    f, g = torch.load(r["fingerprint"]), torch.load(ref["fingerprint"])
    return max(((f[k] - g[k]).norm() / g[k].norm().clamp_min(1e-30)).item() for k in ("h", "w"))


def print_table(results, a):
    refs = {}
    for r in results:
        if r["method"] == "ours" and r["status"] == "ok":
            refs.setdefault(r["rows"], r)
    floors = {r["rows"]: r for r in results if r["method"] == "floor" and r["status"] == "ok"}
    head = ["method", "rows", "time ms", "× floor", "peak GiB", "loss rel-diff", "grad rel-diff"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [label(r, a), f"{r['rows']:,}"]
        if r["status"] != "ok":
            cells += [r["status"]] + ["—"] * 4
        else:
            fl = floors.get(r["rows"])
            ref = refs.get(r["rows"])
            cells.append(f"{r['time_ms']:.1f}")
            cells.append(f"{r['time_ms'] / fl['time_ms']:.2f}" if fl else "n/a")
            cells.append(f"{r['peak_gib']:.3f}" if r.get("peak_gib") is not None else "n/a")
            if "loss" in r and ref is not None:
                cells.append(f"{abs(r['loss'] - ref['loss']) / max(abs(ref['loss']), 1e-30):.1e}")
                d = rel_grad_diff(r, ref)
                cells.append(f"{d:.1e}" if d is not None else "n/a")
            else:
                cells += ["n/a", "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    best = {}
    for r in results:
        if r["method"] == "ours" and r["status"] == "ok":
            if r["rows"] not in best or r["time_ms"] < best[r["rows"]]["time_ms"]:
                best[r["rows"]] = r
    if len({r["chunk"] for r in results if r["method"] == "ours"}) > 1:
        for rows, r in best.items():
            print(f"\nfastest ours at {rows:,} rows: {label(r, a)}, {r['time_ms']:.1f} ms")


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[8192, 32768], help="B·T supervised rows")
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--student-hidden", type=int, default=1536)
    ap.add_argument("--teacher-hidden", type=int, default=3584)
    ap.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--chunk-size", nargs="+", default=["auto"], help="rows per chunk for ours (several = sweep)")
    ap.add_argument("--liger-chunk-size", type=int, default=1024, help="liger's default is 1024")
    ap.add_argument("--liger-compile", choices=["auto", "on", "off"], default="auto", help="auto: on for cuda")
    ap.add_argument("--floor-chunk", type=int, default=0, help="0: chunk-free floor GEMMs")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--methods", nargs="+", choices=ALL_METHODS, default=DEFAULT_METHODS)
    ap.add_argument("--logit-std", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument(
        "--cpu-clock", choices=["wall", "process"], default="wall",
        help="CPU timer: wall (perf_counter) or process CPU time (robust on a shared machine; use --threads 1)",
    )  # fmt: skip
    ap.add_argument(
        "--cpu-mem", choices=["tensors", "rss", "none"], default="tensors",
        help="CPU peak memory: live tensor bytes in one extra untimed step (like CUDA's allocator "
        "count), or peak RSS growth of the case's fresh process (includes library workspaces)",
    )  # fmt: skip
    ap.add_argument("--no-isolate", dest="isolate", action="store_false", help="run all cases in one process")
    ap.add_argument("--case-timeout", type=int, default=1800)
    ap.add_argument("--_case", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.passthrough = [s for s in (argv if argv is not None else sys.argv[1:])]
    if "--_case" in a.passthrough:
        i = a.passthrough.index("--_case")
        del a.passthrough[i : i + 2]
    return a


def main(argv=None):
    a = parse(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a._case:
        method, rows, chunk, fp = json.loads(a._case)
        print(json.dumps(run_case(method, rows, chunk, a, fp)), flush=True)
        return
    dev = torch.device(a.device)
    desc = f"V={a.vocab:,} H_s={a.student_hidden} H_t={a.teacher_hidden} {a.dtype} on {a.device}"
    if dev.type == "cuda":
        desc += f" ({torch.cuda.get_device_name(dev)})"
    clock = "CUDA events" if dev.type == "cuda" else f"{a.cpu_clock} clock, {torch.get_num_threads()} threads"
    print(f"{desc}, torch {torch.__version__}, median of {a.repeats} after {a.warmup} warmup ({clock})", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in case_list(a):
            t0 = time.perf_counter()
            if a.isolate:
                r = run_isolated(case, a, tmp)
            else:
                r = run_case(*case, a, Path(tmp) / f"{case[0]}-{case[1]}-{case[2]}.pt")
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            results.append(r)
            t = f"{r['time_ms']:.1f} ms" if r["status"] == "ok" else r["status"]
            print(f"  {case[0]} rows={case[1]} chunk={case[2]}: {t} [{time.perf_counter() - t0:.0f}s]", flush=True)
        print()
        print_table(results, a)


if __name__ == "__main__":
    main()
