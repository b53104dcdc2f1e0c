"""serve.md and serve.png from the serving benchmark's results; "What we tried" comes from serve_notes.md."""
from __future__ import annotations

from pathlib import Path
from statistics import median

NOTES = Path(__file__).parent / "serve_notes.md"


def _by_key(rows: list[dict]) -> dict:
    return {r["key"]: r for r in rows}


def cpu_class(flags: list[str]) -> str:
    """Results are kept per CPU class: the fastest variant and every ratio depend on the instruction set
    (AVX512-BF16 without AMX is its own class: bf16 runs there, at a speed neither AMX nor plain AVX-512 tells)."""
    classes = (("amx_bf16", "amx"), ("avx512_bf16", "avx512-bf16"), ("avx512f", "avx512"), ("avx2", "avx2"))
    return next((name for flag, name in classes if flag in flags), "other")


def ceiling(limit_gflops: float, gflop_per_text: float, a32_texts_per_s: float) -> float:
    """The best ratio to A b32 a variant could reach at 100% of its arithmetic's compute limit."""
    return round(limit_gflops / gflop_per_text / a32_texts_per_s, 2)


def targets(rows: list[dict], chosen: str, limit_gflops: float | None = None, gflop_per_text: float | None = None,
            paired: dict | None = None) -> list[dict]:
    """The issue's targets, for each measured deployment: D (one single-threaded worker per core) and D1
    (the product default, one worker using every core). Server-vs-in-process targets use the median over
    paired passes where the run has them (see serve_bench: each server pass right after its reference),
    else the best passes of the rows."""
    paired = paired or {}

    def throughput_ratio(key: str, best_ratio: float) -> float:
        p = paired.get(key)
        return median([a / b for a, b in zip(p["texts_per_s"], p["reference_texts_per_s"], strict=False)]) if p else best_ratio

    def latency_over(key: str, best_over: float) -> float:
        p = paired.get(key)
        return median([a - b for a, b in zip(p["p50_ms"], p["reference_p50_ms"], strict=False)]) if p else best_over

    r = _by_key(rows)
    a32 = r["A-b32"]["texts_per_s"]
    c32, c1 = r[f"C-{chosen}-b32"], r[f"C-{chosen}-b1"]
    first = {"name": f"fastest accuracy-preserving variant ({chosen}) in-process b32 vs A b32", "goal": ">= 4x",
             "value": round(c32["texts_per_s"] / a32, 2), "met": c32["texts_per_s"] / a32 >= 4, "variant": chosen}
    if limit_gflops and gflop_per_text:
        first["ceiling"] = ceiling(limit_gflops, gflop_per_text, a32)
    out = [first]
    for d in [d for d in ("D", "D1") if f"{d}-c32" in r]:
        served = r[f"{d}-c32"]["texts_per_s"]
        ratio = throughput_ratio(f"{d}-c32", served / c32["texts_per_s"])
        out.append({"name": f"{d} c32 vs C-{chosen} in-process b32", "goal": ">= 0.9x", "value": round(ratio, 2),
                    "met": ratio >= 0.9, "paired": f"{d}-c32" in paired})
        if f"{d}-c1" in r:
            over = latency_over(f"{d}-c1", r[f"{d}-c1"]["p50_ms"] - c1["p50_ms"])
            out.append({"name": f"{d} c1 p50 vs C-{chosen} in-process b1 p50", "goal": "<= +3 ms", "value": round(over, 2),
                        "met": over <= 3, "paired": f"{d}-c1" in paired})
        for key in [k for k in r if k.startswith(f"{d}-c") and "texts_per_request" in r[k]]:
            # the same texts in flight as at concurrency 32, sent in lists: what the server costs per request
            # and what it costs per text, apart
            lists = r[key]
            ratio = throughput_ratio(key, lists["texts_per_s"] / c32["texts_per_s"])
            out.append({"name": f"{d} c{lists['concurrency']} x {lists['texts_per_request']} texts per request vs "
                                f"C-{chosen} in-process b32", "goal": ">= 0.9x", "value": round(ratio, 2),
                        "met": ratio >= 0.9, "paired": key in paired})
        if "B-c32" in r:
            ratio = served / r["B-c32"]["texts_per_s"]
            out.append({"name": f"{d} c32 vs B c32 (stock TorchServe example)", "goal": ">= 5x", "value": round(ratio, 2),
                        "met": ratio >= 5})
    return out + runtime_targets(r)


# ONNX Runtime against TorchScript, same model and texts, in-process at batch 32 (training.export --format onnx).
ONNX_SPEEDUP, INT8_MAX_DROP_POINTS = 1.25, 0.5


def runtime_targets(r: dict) -> list[dict]:
    out = []
    if "C-onnx-fp32-b32" in r:
        ratio = r["C-onnx-fp32-b32"]["texts_per_s"] / r["C-fp32-b32"]["texts_per_s"]
        out.append({"name": "ONNX Runtime fp32 vs TorchScript fp32, in-process b32", "goal": f">= {ONNX_SPEEDUP}x",
                    "value": round(ratio, 2), "met": ratio >= ONNX_SPEEDUP})
    if "C-onnx-int8-b32" in r and "C-onnx-fp32-b32" in r:
        drop = 100 * (r["C-onnx-fp32-b32"]["accuracy"] - r["C-onnx-int8-b32"]["accuracy"])
        out.append({"name": "ONNX Runtime int8 accuracy vs ONNX Runtime fp32 (points lost)",
                    "goal": f"<= {INT8_MAX_DROP_POINTS}", "value": round(drop, 2), "met": drop <= INT8_MAX_DROP_POINTS})
    return out


def table(results: dict) -> str:
    a32 = _by_key(results["rows"])["A-b32"]["texts_per_s"]
    lines = ["| row | path | variant | batch / concurrency | texts/s | p50 ms | p99 ms | accuracy | vs A b32 "
             "| GFLOP/s | % of limit |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results["rows"]:
        shape = f"batch {r['batch']}" if r["batch"] else f"concurrency {r['concurrency']}" + (
            f" x {r['texts_per_request']} texts" if r.get("texts_per_request") else "")
        lines.append(f"| {r['key']} | {r['label']} | {r['variant']} | {shape} | {r['texts_per_s']:.1f} | {r['p50_ms']:.1f} "
                     f"| {r['p99_ms']:.1f} | {100 * r['accuracy']:.2f}% | {r['texts_per_s'] / a32:.2f}x | {r['gflops']:.1f} "
                     f"| {100 * r['limit_fraction']:.1f}% |")
    return "\n".join(lines)


def _mixed(results: dict) -> str:
    """int8 variants run only their Linear layers in int8 (see bench.flops): their limit mixes the two peaks."""
    limits = {r["variant"]: r["limit_gflops"] for r in results["rows"]}
    shares = results.get("int8_share", {})
    if not shares:
        return ""
    return ("; an int8 variant runs only part of its FLOPs in int8 (attention products and the head stay fp32; "
            "static ONNX int8 also keeps the fused attention's projections and the feed-forward outputs), so its "
            "limit mixes the two: " + ", ".join(
                f"{v} {100 * share:.0f}% int8, {limits[v]} GFLOP/s" for v, share in shares.items()))


def dataset(results: dict) -> str:
    """The name of the data folder the texts came from (rt-polarity for the training benchmark's run)."""
    return Path(results.get("data") or results["config"]["data"]).name  # results before "data" was recorded


def markdown(results: dict) -> str:
    m, lim, fl = results["machine"], results["limit"], results["flops"]
    out = ["# Serving benchmark", "",
           # Results from before the command was recorded named their run only.
           f"`{results.get('command') or 'python -m bench.serve_bench --run ' + results['run']}`, {results['started']}: "
           f"{results['texts']} {dataset(results)} test texts, the same fine-tuned model on every row.", "",
           f"Machine: {m['cpus']} CPUs ({m['cpu']}; {', '.join(m['isa'])}), torch {m['torch']}. "
           f"Load average (1/5/15 min) at start {_load(results['loadavg_start'])}, at end {_load(results['loadavg_end'])}: "
           "other work on the host makes every number lower and noisier; ratios come from the same run.", "",
           *(["**The host was busy when this run started (1-minute load average above half the CPU count): every row "
               "is slowed, multi-threaded rows (A, B, C, D1) by far more than single-threaded workers (D). Rerun "
               "`make bench-serve` on a quiet host before comparing.**", ""] if results.get("host_busy_at_start") else []),
           table(results), "",
           "Latency: per call in-process (a batch-32 call answers 32 texts at once), per request on a server. "
           "Server rows send one text per request (B: text/plain as in the stock example, D: JSON `{\"text\"}`) "
           "from a closed-loop asyncio load generator over keep-alive connections; rows keyed cNxK send K texts per "
           "request (`{\"texts\": [...]}`) with N requests in flight.", ""]
    for key, d in results.get("deployments", {}).items():
        out.append(f"{key}: {d['workers']} worker(s) x {d['threads']} torch thread(s), batch_size {d['batch_size']}, "
                   f"max_batch_delay {d['max_batch_delay_ms']} ms, handler chunk_size {d['chunk_size']}, token auth on.")
    if results.get("deployments"):
        out += ["", f"Served variant: **{results['chosen_variant']}**, the fastest at batch 32 whose accuracy is within 0.5 "
                "points of fp32 and whose predictions do not depend on batch composition.", ""]
    if results.get("pt2"):  # what the AOTInductor package cost to build (training.export records it in the card)
        p = results["pt2"]
        out += [f"pt2-fp32: torch.export in {p['export_seconds']} s, AOTInductor compile in {p['compile_seconds']} s, "
                f"package {p['package_bytes'] / 1e6:.1f} MB.", ""]
    cores = [r for r in results["rows"] if "loadgen_cores" in r]
    if cores:
        out += ["CPU use during server rows (cores busy on average): " + "; ".join(
            f"{r['key']}: load generator {r['loadgen_cores']}, TorchServe frontend {r['frontend_cores']}, "
            f"workers {r['workers_cores']}" for r in cores) + ".", ""]
    out += variants(results)
    out += ["## Targets", "", "| target | goal | measured | met |", "| --- | --- | ---: | --- |"]
    out += [f"| {t['name']}{' (median of paired passes)' if t.get('paired') else ''} | {t['goal']} | {t['value']} "
            f"| {'yes' if t['met'] else 'no'} |" for t in results["targets"]]
    pairs = results.get("paired", {})
    if pairs:
        out += ["", "Paired passes (each server pass measured right after an in-process pass of its reference row): "
                + "; ".join(f"{k} vs {p['reference']}: {' / '.join(map(str, p['texts_per_s']))} vs "
                            f"{' / '.join(map(str, p['reference_texts_per_s']))} texts/s, p50 "
                            f"{' / '.join(map(str, p['p50_ms']))} vs {' / '.join(map(str, p['reference_p50_ms']))} ms"
                            for k, p in pairs.items()) + "."]
    out += [f"\nAt 100% of its arithmetic's compute limit (below), the {t['variant']} variant could reach at most "
            f"**{t['ceiling']}x** A b32 on this machine{': the 4x goal is out of reach here' if t['ceiling'] < 4 else ''}."
            for t in results["targets"] if "ceiling" in t]
    out += floor_lines(results)
    out += ["", "## Compute limit and model FLOPs", "",
            f"Practical limit: best of {lim['reps']} {lim['matmul_n']}^3 matmuls in torch on {lim['threads']} threads: "
            f"fp32 {lim['fp32_gflops']} GFLOP/s, bf16 {lim['bf16_gflops'] or 'not measured (no bf16 instructions)'}"
            f"{' GFLOP/s' if lim['bf16_gflops'] else ''}, int8 {lim['int8_gflops']} GFLOP/s "
            f"({lim.get('int8_kernel', 'torch._int_mm, int8 x int8 -> int32')}). Each row is compared with the limit of "
            "its own arithmetic" + _mixed(results) + ".", "",
            f"Model FLOPs per text: `{fl['formula']}` with p_tok = {fl['p_tok']:,}, p_head = {fl['p_head']:,}, "
            f"layers = {fl['layers']}, hidden = {fl['hidden']}; mean {fl['mean_tokens']} tokens, "
            f"{fl['mean_gflop_per_text']} GFLOP per text. Only real tokens count: padding is work the machine does "
            "but the model does not need.", "",
            "## Correctness checks", "", "| check | ok | detail |", "| --- | --- | --- |"]
    out += [f"| {c['name']} | {'yes' if c['ok'] else '**NO**'} | {c['detail']} |" for c in results["checks"]]
    out += ["", "A \"decisive\" difference is one where the reference's top-2 logit margin exceeds the variant's "
            "numerical tolerance (training.export's parity tolerances); ties within noise may break either way."]
    if NOTES.is_file():
        out += ["", NOTES.read_text().strip()]
    return "\n".join(out) + "\n"


def floor_lines(results: dict) -> list[str]:
    """TorchServe's own share of concurrency-1 latency, next to what each deployment measured."""
    floor = results.get("floor")
    if not floor:
        return []
    r = _by_key(results["rows"])
    over = "; ".join(f"{k} c1 p50 {r[f'{k}-c1']['p50_ms']} ms" for k in ("D", "D1") if f"{k}-c1" in r)
    return ["", f"TorchServe's floor at concurrency 1: a handler that answers at once without a model, batch_size "
            f"{floor['batch_size']} and max_batch_delay {floor['max_batch_delay_ms']} ms like D, answers in "
            f"**{floor['median_p50_ms']} ms** p50 (median of {' / '.join(map(str, floor['p50_ms']))} ms)"
            f"{'; ' + over if over else ''}. "
            "The +3 ms target leaves our handler and model whatever the floor does not take."]


def variants(results: dict) -> list[str]:
    r, inv = _by_key(results["rows"]), results.get("batch_invariance", {})
    fp32 = r["C-fp32-b32"]["accuracy"]
    lines = ["| variant | accuracy | vs fp32 (points) | max \\|Δlogit\\| batch 1 vs 32 | texts/s at batch 32 | eligible |",
             "| --- | ---: | ---: | --- | ---: | --- |"]
    for v, i in inv.items():
        c = r[f"C-{v}-b32"]
        drop = 100 * (fp32 - c["accuracy"])
        same = f"{i['max_abs_logit_diff']:.1e} ({'within' if i['ok'] else 'over'} {i['tolerance']:g})"
        lines.append(f"| {v} | {100 * c['accuracy']:.2f}% | {100 * (c['accuracy'] - fp32):+.2f} | {same} "
                     f"| {c['texts_per_s']:.1f} | {'yes' if i['ok'] and drop <= 0.5 else 'no'} |")
    skipped = [f"{v} not measured: {why}." for v, why in results.get("skipped_variants", {}).items()]
    return ["Variants (in-process, batch 32):", "", *lines, "", *skipped, *([""] if skipped else [])]


def _load(values) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"A": "tab:gray", "B": "tab:red", "C": "tab:blue", "D": "tab:green"}
    fig, ax = plt.subplots(figsize=(8, 5.5))
    placed = []
    for r in results["rows"]:
        x, y = r["p50_ms"], r["texts_per_s"]
        ax.scatter(x, y, color=colors[r["key"][0]], s=40)
        # A point close to an earlier one gets its label on the left, so each label stays beside its own point.
        near = any(abs(x / px - 1) < 0.25 and abs(y / py - 1) < 0.1 for px, py in placed)
        ax.annotate(r["key"], (x, y), textcoords="offset points", xytext=(-6, 0) if near else (6, 0), fontsize=8,
                    ha="right" if near else "left", va="center")
        placed.append((x, y))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("p50 latency (ms, per call or request)")
    ax.set_ylabel("throughput (texts/s)")
    m = results["machine"]
    ax.set_title(f"Serving {dataset(results)} ({results['texts']} texts), {m['cpus']} CPUs ({m['cpu']}; "
                 f"{cpu_class(m['isa'])}); up and left is better", fontsize=10)
    for family, color in colors.items():
        ax.scatter([], [], color=color, label={"A": "A: HF pipeline", "B": "B: stock TorchServe",
                                               "C": "C: ours in-process", "D": "D: ours on TorchServe"}[family])
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
