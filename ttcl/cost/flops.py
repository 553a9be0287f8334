"""Model facts and the FLOPs model: what a model costs per token, and the paper's exchange.

Facts come from a GGUF file's metadata and tensor shapes (the `gguf` package's reader), from
a transformers `config.json` (dimensions only, no torch), or from numbers in a program
(`model big = spec(params=1.7e9, layers=24, d_model=2048)`). The formulas:

    forward FLOPs per token = 2·N + 4·n_layer·ctx·d_attn + 2·d_model·n_vocab (if its logits are needed)
    pretraining FLOPs       = 6·N·D
    exchange                = M + 3·(M - 1)/R   (Snell et al. 2024, §7)

with N the non-embedding parameters, ctx the positions a token attends over, D tokens and
R = D_inference / D_pretrain.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict

from ttcl.backends.models import ModelFacts
from ttcl.errors import TTCLError

# ---- the FLOPs model ---------------------------------------------------------------------


def forward_flops(facts: ModelFacts, tokens: float, start: float = 0.0, logits: float = 0.0) -> float:
    """FLOPs of a forward pass over `tokens` consecutive tokens whose first sits at position
    `start` (so token i attends over start + i + 1 positions), computing `logits` outputs.

    Kaplan et al. 2020, "Scaling Laws for Neural Language Models", Table 1:
    C_forward ≈ 2N + 2·n_layer·n_ctx·d_attn per token, N the non-embedding parameters (one
    multiply-add per weight). Their attention term is for a token of a full n_ctx window under
    a causal mask, whose query attends over n_ctx/2 positions on average; QK^T and A·V are
    each ctx·d_attn multiply-adds, so with ctx the positions actually attended the term is
    4·n_layer·ctx·d_attn (equal to theirs at ctx = n_ctx/2). The mean ctx of the run is
    start + (tokens + 1)/2. Table 1 also lists the de-embedding, 2·d_model·n_vocab per token,
    which C_forward drops as negligible for large models; at 135M parameters and a 49k
    vocabulary it is a quarter of 2N, so it is counted where logits are computed (every
    decoded token; the last token of a prompt).
    """
    return counted_flops(facts, tokens, attended=tokens * (start + (tokens + 1) / 2), logits=logits)


def counted_flops(facts: ModelFacts, tokens: float, attended: float, logits: float) -> float:
    """The same formula on what a backend counted: `tokens` decoded, `attended` the sum over
    them of the positions each attended to, `logits` outputs computed."""
    return (
        2 * facts.params_non_embedding * tokens
        + 4 * facts.n_layer * facts.d_attn * attended
        + 2 * facts.d_model * facts.n_vocab * logits
    )


def pretraining_flops(params: float, tokens: float) -> float:
    """6·N·D: forward (2N) plus backward (4N) per training token (Kaplan et al. 2020, §2.1)."""
    return 6 * params * tokens


# ---- the paper's exchange (Snell et al. 2024, §7) ----------------------------------------
#
# A small model of N parameters and a model M times larger are pretrained on D_pre tokens and
# then serve D_inf inference tokens; R = D_inf / D_pre. Their total FLOPs:
#     small, spending k times its inference compute:  6·N·D_pre + k·2·N·D_inf
#     large, spending it once:                        6·M·N·D_pre + 2·M·N·D_inf
# Setting them equal and dividing by 2·N·D_inf:  3/R + k = 3M/R + M, so
#     k = M + 3·(M - 1)/R        and back:       M = (k + 3/R) / (1 + 3/R) = (k·R + 3)/(R + 3).


class Exchange(BaseModel):
    """The test-time multiple k of a small model that costs what a model M× larger costs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size_ratio: float  # M
    ratio: float  # R = D_inference / D_pretrain
    multiple: float  # k


def exchange(size_ratio: float, ratio: float) -> Exchange:
    """The test-time compute multiple k = M + 3(M-1)/R of the small model whose total FLOPs
    (pretraining plus inference) equal those of a model `size_ratio` (M) times larger that
    spends its inference compute once. `exchange(14, 0.79).multiple` is about 63.4."""
    _positive(size_ratio=size_ratio, ratio=ratio)
    return Exchange(size_ratio=size_ratio, ratio=ratio, multiple=size_ratio + 3 * (size_ratio - 1) / ratio)


def matching_size(multiple: float, ratio: float) -> Exchange:
    """The reverse question: the size ratio M = (k·R + 3)/(R + 3) of the larger model whose
    total FLOPs equal the small model's at a test-time multiple k."""
    _positive(multiple=multiple, ratio=ratio)
    return Exchange(size_ratio=(multiple * ratio + 3) / (ratio + 3), ratio=ratio, multiple=multiple)


def _positive(**values: float) -> None:
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise TTCLError(f"{name} must be a positive number, got {value!r}")
