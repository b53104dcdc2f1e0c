"""The machine's practical compute limit, and the model FLOPs each text needs.

Limit: the best of several large square matmuls (n = 2048) per dtype, on all cores, in torch itself;
this is what the same kernels reach when shapes are ideal, so a row's fraction of it says how much of
the machine the serving path turns into model work.

Model FLOPs for one text of T real tokens (padding is waste, so it is not counted):
    2 * P_tok * T          every encoder Linear (Q, K, V, attention output, FFN in/out) sees every token
  + 4 * L * H * T^2        attention scores Q K^T and the weighted sum A V, per layer (2 FLOPs per MAC)
  + 2 * P_head             pooler and classifier, once per text (the first token only)
where P_tok = sum of in*out over the encoder's Linear layers, P_head the same over the rest of the
model's Linear layers, L the layer count and H the hidden size. Embeddings, layer norms, softmax and
GELU are ignored (under 1% for MiniLM-sized models).

An int8 variant is partly fp32: int8 kernels run only the Linear weights it stores in int8 (every encoder
Linear for TorchScript int8; for ONNX int8, what its graph holds in int8, see training.onnx_build.int8_weights),
while attention's T^2 products multiply two activations and stay fp32, as does the small head. Its limit is
the mixed one (mixed_limit): time = int8 part / int8 peak + rest / fp32 peak, so a ceiling drawn from it is one
the variant could actually reach.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass

import torch

from handlers.device import cpu_has_bf16

MATMUL_N = 2048


def _best_gflops(fn, flops: float, reps: int) -> float:
    fn()  # first call: allocation, kernel selection
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def compute_limit(n: int = MATMUL_N, reps: int = 5) -> dict:
    """GFLOP/s of an n^3 matmul in fp32, bf16 (only where the CPU has bf16 instructions: elsewhere it is a
    reference path that takes minutes and no served variant uses it) and int8.

    int8 is measured through the kernel the int8 export runs, a dynamically quantised Linear (fbgemm), not
    torch._int_mm: that one is a naive loop on some CPUs (AVX2) and AMX-only fast on others."""
    flops = 2.0 * n ** 3
    out = {"matmul_n": n, "reps": reps, "threads": torch.get_num_threads(), "bf16_gflops": None}
    with torch.inference_mode():
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            if dtype == torch.bfloat16 and not cpu_has_bf16():
                continue
            a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
            out[f"{name}_gflops"] = round(_best_gflops(lambda a=a, b=b: a @ b, flops, reps), 1)
        linear = torch.nn.Sequential(torch.nn.Linear(n, n, bias=False))
        with warnings.catch_warnings():  # torch.ao.quantization's deprecation notice
            warnings.simplefilter("ignore")
            q8 = torch.ao.quantization.quantize_dynamic(linear, {torch.nn.Linear}, dtype=torch.qint8)
        x = torch.randn(n, n)
        out["int8_gflops"] = round(_best_gflops(lambda: q8(x), flops, reps), 1)
        out["int8_kernel"] = "a dynamically quantised Linear, the kernel the int8 export runs"
    return out


def best_limit(*measurements: dict) -> dict:
    """Per dtype the best of several compute_limit() results, with all of them kept for the record."""
    best = dict(measurements[0])
    for key in ("fp32_gflops", "bf16_gflops", "int8_gflops"):
        values = [m[key] for m in measurements if m.get(key)]
        best[key] = max(values) if values else None
    best["measurements"] = [{k: m[k] for k in ("fp32_gflops", "bf16_gflops", "int8_gflops")} for m in measurements]
    return best


def limit_for(limit: dict, variant: str) -> float:
    """The limit a row is measured against: the peak of the arithmetic its matmuls run in."""
    return limit.get(f"{variant}_gflops") or limit["fp32_gflops"]


def mixed_limit(limit: dict, int8_share: float) -> float:
    """The peak of a model that runs `int8_share` of its FLOPs at the int8 peak and the rest at the fp32 one."""
    fp32, int8 = limit["fp32_gflops"], limit.get("int8_gflops") or limit["fp32_gflops"]
    return round(1.0 / (int8_share / int8 + (1.0 - int8_share) / fp32), 1)


@dataclass(frozen=True)
class FlopModel:
    p_tok: int
    p_head: int
    layers: int
    hidden: int

    @classmethod
    def of(cls, model) -> FlopModel:
        """Read the parameter counts off an eager Hugging Face classifier."""
        encoder = model.base_model.encoder
        in_encoder = {id(m) for m in encoder.modules()}
        linears = [(id(m), m.in_features * m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]
        p_tok = sum(n for i, n in linears if i in in_encoder)
        return cls(p_tok=p_tok, p_head=sum(n for i, n in linears if i not in in_encoder),
                   layers=model.config.num_hidden_layers, hidden=model.config.hidden_size)

    def per_text(self, tokens: int) -> float:
        return 2.0 * self.p_tok * tokens + 4.0 * self.layers * self.hidden * tokens ** 2 + 2.0 * self.p_head

    def int8_share(self, tokens, int8_params: int) -> float:
        """The share of all FLOPs over texts of these token counts that int8 kernels run, when `int8_params` of
        the encoder's p_tok Linear weights are int8."""
        total = sum(self.per_text(int(t)) for t in tokens)
        return 2.0 * min(int8_params, self.p_tok) * float(sum(int(t) for t in tokens)) / total

    def describe(self) -> dict:
        return {**asdict(self), "formula": "2*p_tok*T + 4*layers*hidden*T^2 + 2*p_head, T = real tokens of the text"}
