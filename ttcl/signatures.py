"""Types and the signatures of everything built in: stages, model and verifier constructors.

One table is the single source of truth for arity, argument types, defaults, value limits,
stage types (what flows in and out) and generation counts; the checker, the lowering and the
docs all read it, so a new primitive is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# ---- types -------------------------------------------------------------------------------

QUESTION, POOL, ANSWER = "Question", "Pool", "Answer"
SCALARS = ("int", "float", "str", "bool")
VALUE_TYPES = SCALARS + ("model", "verifier", "prompt")
# A list literal `[0.3, 0.6]` is a `list[int]` when every item is an int (an empty list too),
# else a `list[float]`; lists hold numbers only and appear only as arguments.
NUMBER_LISTS = ("list[int]", "list[float]")


@dataclass(frozen=True)
class Stage:
    """The type of a stage: the kinds of value it accepts and the kind it returns."""

    accepts: frozenset[str]
    returns: str

    def __str__(self) -> str:
        return f"{' | '.join(sorted(self.accepts, key=_FLOW_ORDER.index))} -> {self.returns}"


_FLOW_ORDER = [QUESTION, POOL, ANSWER]
Type = str | Stage  # a value type name, or a stage type


def describe(t: Type) -> str:
    """How a type reads in an error message: `an int`, `a verifier`, `a stage (Pool -> Answer)`."""
    if isinstance(t, Stage):
        return f"a stage ({t})"
    if t in NUMBER_LISTS:
        return "a list of integers" if t == "list[int]" else "a list of numbers"
    return f"an {t}" if t[0].lower() in "aeiou" else f"a {t}"


def assignable(actual: Type, expected: str) -> bool:
    """Whether a value of type `actual` may be passed where `expected` is declared: ints
    pass as floats, and so lists of ints as lists of floats."""
    if actual in NUMBER_LISTS and expected in NUMBER_LISTS:
        return assignable(actual[5:-1], expected[5:-1])
    return actual == expected or (actual == "int" and expected == "float")


# ---- signatures --------------------------------------------------------------------------

REQUIRED = object()  # the default of a parameter that must be given


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: Any = REQUIRED
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    step_level: bool = False  # a verifier argument that must score every step (beam search)
    ascending: bool = False  # a list whose items must strictly increase (minimum/maximum: per item)
    doc: str = ""


@dataclass(frozen=True)
class Signature:
    """A built-in callable. `kind` is generator, selector, difficulty, model, verifier or answer."""

    name: str
    kind: str
    params: tuple[Param, ...]
    doc: str
    returns: str = POOL
    accepts: frozenset[str] = frozenset({QUESTION, POOL})
    generations: Callable[[dict], int] = field(default=lambda args: 0)
    rule: Callable[[dict], str | None] = field(default=lambda args: None)

    @property
    def stage(self) -> Stage:
        return Stage(self.accepts, self.returns)

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


def _multiple_of_width(args: dict) -> str | None:
    if args["n"] % args["width"]:
        return f"n ({args['n']}) must be a multiple of width ({args['width']})"
    return None


def _settled_confidence(args: dict) -> str | None:
    # 0.5 would stop at a tie (a Beta(v+1, v+1) is above 1/2 with probability 1/2), and no
    # finite count of votes makes the probability 1: both ends are refused, not clamped
    if not 0.5 < args["confidence"] < 1:
        return f"confidence must be strictly between 0.5 and 1, got {args['confidence']:g}"
    return None


# Options every generator takes; None means "inherit from the model".
GENERATOR_OPTIONS = (
    Param("model", "model", None, doc="the policy model (default: the file's first model)"),
    Param("prompt", "prompt", None, doc="a prompt template with a {question} hole"),
    Param("temperature", "float", None, minimum=0.0, maximum=10.0, doc="0 is greedy (default: the model's)"),
    Param("max_tokens", "int", None, minimum=1, maximum=1_000_000, doc="tokens per answer (default: the model's)"),
    Param("delimiter", "str", None, doc='the step delimiter (default "\\n\\n")'),
)
MAX_COUNT = 1_000_000  # samples per stage: far beyond any real budget, below anything absurd
_N = Param("n", "int", minimum=1, maximum=MAX_COUNT, doc="number of generations")
_V = Param("v", "verifier", doc="the verifier that scores candidates")
_STEP_V = Param("v", "verifier", step_level=True, doc="a step-level verifier (PRM)")
_WIDTH = Param("width", "int", 4, minimum=1, maximum=MAX_COUNT, doc="proposals per beam (m)")
_DEPTH = Param("depth", "int", 40, minimum=1, maximum=1000, doc="maximum steps")

_STAGES = (
    Signature(
        "sample",
        "generator",
        (_N,) + GENERATOR_OPTIONS,
        "n independent samples, one batched call with the prompt prefilled once",
        generations=lambda a: a["n"],
    ),
    Signature(
        "adaptive",
        "generator",
        (
            Param("n", "int", minimum=1, maximum=MAX_COUNT, doc="the most generations it may draw"),
            Param(
                "round", "int", 4, minimum=1, maximum=MAX_COUNT, doc="samples per round; the rule is read after each"
            ),
            Param(
                "confidence",
                "float",
                0.95,
                doc="for `beta`: how sure it must be that the leading answer is the majority "
                "(strictly between 0.5 and 1)",
            ),
            Param(
                "rule",
                "str",
                "beta",
                choices=("beta", "window"),
                doc="`beta`: Adaptive-Consistency's Beta posterior; `window`: a round whose answers all agree",
            ),
        )
        + GENERATOR_OPTIONS,
        "samples in rounds until the leading answer is settled (adaptive self-consistency), at most n",
        generations=lambda a: a["n"],
        rule=_settled_confidence,
    ),
    Signature(
        "revise",
        "generator",
        (
            Param("k", "int", minimum=1, maximum=MAX_COUNT, doc="attempts in the chain"),
            Param("context", "int", 4, minimum=0, maximum=4, doc="previous attempts in context"),
        )
        + GENERATOR_OPTIONS,
        "a chain of k sequential attempts, each conditioned on up to 4 previous ones",
        generations=lambda a: a["k"],
    ),
    Signature(
        "beam",
        "generator",
        (_N, _STEP_V, _WIDTH, _DEPTH) + GENERATOR_OPTIONS,
        "PRM beam search: keep the top n/width partial solutions by step score, "
        "expand each with width proposals, until every beam ends or depth steps",
        generations=lambda a: a["n"],
        rule=_multiple_of_width,
    ),
    Signature(
        "lookahead",
        "generator",
        (_N, _STEP_V, _WIDTH, Param("k", "int", 2, minimum=1, maximum=100, doc="rollout steps"), _DEPTH)
        + GENERATOR_OPTIONS,
        "beam search scored at the end of a greedy k-step rollout; costs about n(k+1)",
        generations=lambda a: a["n"] * (a["k"] + 1),
        rule=_multiple_of_width,
    ),
    Signature(
        "dvts",
        "generator",
        (_N, _STEP_V, _WIDTH, _DEPTH) + GENERATOR_OPTIONS,
        "diverse verifier tree search: n/width independent subtrees, each searched greedily by the verifier",
        generations=lambda a: a["n"],
        rule=_multiple_of_width,
    ),
    Signature(
        "vote", "selector", (), "majority over the extracted final answers", accepts=frozenset({POOL}), returns=ANSWER
    ),
    Signature(
        "best",
        "selector",
        (_V,),
        "the candidate with the highest verifier score",
        accepts=frozenset({POOL}),
        returns=ANSWER,
    ),
    Signature(
        "weighted_vote",
        "selector",
        (_V,),
        "best-of-N weighted: sum the scores of candidates sharing an answer, take the largest",
        accepts=frozenset({POOL}),
        returns=ANSWER,
    ),
)
STAGES: dict[str, Signature] = {s.name: s for s in _STAGES}

MAX_BINS = 20
DIFFICULTY = Signature(
    "difficulty",
    "difficulty",
    (
        _V,
        Param("probe", "int", 4, minimum=1, maximum=1024, doc="probe samples (kept as candidates)"),
        Param(
            "bins",
            "int",
            5,
            minimum=2,
            maximum=MAX_BINS,
            doc="quantile bins (default: one more than the thresholds, else 5)",
        ),
        Param(
            "thresholds",
            "list[float]",
            None,
            minimum=0.0,
            maximum=1.0,
            ascending=True,
            doc="bins - 1 fitted cut points of the mean score; a score >= t is in an easier "
            "bin than t (default: the run's thresholds, else equal widths)",
        ),
    ),
    "bin the question by the mean verifier score of a few probe samples",
    accepts=frozenset({QUESTION}),
    returns=QUESTION,
    generations=lambda a: a["probe"],
)

_AGG = Param("agg", "str", "last", choices=("last", "min", "prod"), doc="step score aggregation")

MODELS: dict[str, Signature] = {
    s.name: s
    for s in (
        Signature(
            "llama",
            "model",
            (
                Param("path", "str", doc='a GGUF file, or a known name such as "smollm2-135m"'),
                Param("temperature", "float", 0.8, minimum=0.0, maximum=10.0, doc="sampling temperature; 0 is greedy"),
                Param("top_p", "float", 1.0, minimum=1e-6, maximum=1.0, doc="nucleus sampling mass; 1: no cut"),
                Param("top_k", "int", 0, minimum=0, doc="sample among the k likeliest tokens; 0: no top-k cut"),
                Param("max_tokens", "int", 256, minimum=1, maximum=1_000_000, doc="the most tokens an answer may have"),
                Param("n_ctx", "int", 4096, minimum=16, maximum=1_048_576, doc="tokens of context (prompt + answer)"),
                Param("n_gpu_layers", "int", 0, minimum=-1, doc="layers on the GPU (a GPU build); -1: all"),
                Param("threads", "int", 0, minimum=0, doc="0: one per core"),
                Param(
                    "batch",
                    "int",
                    0,
                    minimum=0,
                    maximum=512,
                    doc="the most sequences one decode call of a generation step carries; "
                    "0: measured per model on first use, and kept in the cache directory",
                ),
            ),
            "a GGUF model run by llama.cpp",
        ),
        Signature(
            "torch",
            "model",
            (
                Param(
                    "path",
                    "str",
                    doc='a transformers model directory, a GGUF file, or a known name such as "smollm2-135m"',
                ),
                Param("device", "str", "cpu", choices=("cpu", "cuda"), doc="where the model runs"),
                Param(
                    "dtype",
                    "str",
                    "float32",
                    choices=("float32", "bfloat16", "float16"),
                    doc="number type of the weights",
                ),
                Param("temperature", "float", 0.8, minimum=0.0, maximum=10.0, doc="sampling temperature; 0 is greedy"),
                Param("top_p", "float", 1.0, minimum=1e-6, maximum=1.0, doc="nucleus sampling mass; 1: no cut"),
                Param("top_k", "int", 0, minimum=0, doc="sample among the k likeliest tokens; 0: no top-k cut"),
                Param("max_tokens", "int", 256, minimum=1, maximum=1_000_000, doc="the most tokens an answer may have"),
                Param("n_ctx", "int", 4096, minimum=16, maximum=1_048_576, doc="tokens of context (prompt + answer)"),
                Param("threads", "int", 0, minimum=0, doc="0: torch's default (OMP_NUM_THREADS, else one per core)"),
            ),
            "a transformers causal LM run by torch (needs the torch extra)",
        ),
        Signature(
            "openai",
            "model",
            (
                Param("url", "str", doc='the server\'s OpenAI-compatible API, e.g. "http://127.0.0.1:8000/v1"'),
                Param("model", "str", doc="the model name the server serves"),
                Param("concurrency", "int", 32, minimum=1, maximum=4096, doc="HTTP requests in flight at once"),
                Param(
                    "config",
                    "str",
                    "",
                    doc="the served model's files here (a known name, GGUF or transformers "
                    "directory): prompts rendered locally, FLOPs priced",
                ),
                Param("api_key_env", "str", "OPENAI_API_KEY", doc="the environment variable holding the API key"),
                Param("timeout", "float", 600.0, minimum=1.0, doc="seconds to wait for one reply"),
                Param("retries", "int", 5, minimum=0, maximum=100, doc="retries on timeouts, lost connections and 5xx"),
                Param("temperature", "float", 0.8, minimum=0.0, maximum=10.0, doc="sampling temperature; 0 is greedy"),
                Param("top_p", "float", 1.0, minimum=1e-6, maximum=1.0, doc="nucleus sampling mass; 1: no cut"),
                Param("top_k", "int", 0, minimum=0, doc="sample among the k likeliest tokens; 0: no top-k cut"),
                Param("max_tokens", "int", 256, minimum=1, maximum=1_000_000, doc="the most tokens an answer may have"),
            ),
            "a model behind an OpenAI-compatible server (vLLM, SGLang, llama.cpp's server)",
        ),
        Signature(
            "spec",
            "model",
            (
                Param("params", "float", minimum=1, doc="every parameter, embeddings included"),
                Param("layers", "int", 0, minimum=0, doc="0: unknown (no attention term)"),
                Param("d_model", "int", 0, minimum=0, doc="the residual width; 0: unknown"),
                Param("heads", "int", 0, minimum=0, doc="attention heads (head_dim = d_model / heads)"),
                Param("vocab", "int", 0, minimum=0, doc="vocabulary size; 0: unknown (no logits term)"),
                Param("non_embedding", "float", 0.0, minimum=0, doc="0: params less the embeddings"),
                Param("tied", "bool", True, doc="whether the output projection reuses the embedding"),
                Param("n_ctx", "int", 4096, minimum=16, maximum=1_048_576, doc="the training context"),
                Param("temperature", "float", 0.8, minimum=0.0, maximum=10.0, doc="sampling temperature; 0 is greedy"),
                Param("max_tokens", "int", 256, minimum=1, maximum=1_000_000, doc="the most tokens an answer may have"),
            ),
            "a model described by numbers alone, for costing what-if questions (it cannot run)",
        ),
    )
}

VERIFIERS: dict[str, Signature] = {
    s.name: s
    for s in (
        Signature(
            "self_verify",
            "verifier",
            (Param("m", "model", doc="the model that judges the steps"), _AGG),
            "the model's own P(Yes) to 'is this step correct?', per step",
        ),
        Signature(
            "check",
            "verifier",
            (Param("name", "str", choices=("arith",), doc="the checker: `arith` checks each `a op b = c`"), _AGG),
            "a programmatic checker: `arith` checks each `a op b = c` in a step",
        ),
        Signature(
            "prm",
            "verifier",
            (
                Param("path", "str", doc="a head trained by `ttcl train-prm` (safetensors)"),
                Param("m", "model", None, doc="the model whose hidden states it scores (default: the policy)"),
                _AGG,
            ),
            "a trained PRM head on the policy model's hidden state at the end of each step",
        ),
        Signature(
            "hf_prm",
            "verifier",
            (
                Param("path", "str", doc="a local transformers PRM checkpoint directory"),
                Param("device", "str", "cpu", choices=("cpu", "cuda"), doc="where the PRM runs"),
                _AGG,
            ),
            "a transformers PRM checkpoint (token classification, or Math-Shepherd step tags), on torch",
        ),
        Signature(
            "registered",
            "verifier",
            (
                Param("name", "str", doc="the name given to ttcl.register_verifier"),
                Param("steps", "bool", True, doc="whether it scores every step (false: whole answers only)"),
                _AGG,
            ),
            "a Python callable registered through the API (ttcl.register_verifier)",
        ),
    )
}

_ANSWER_PROMPT = Param(
    "prompt",
    "prompt",
    None,
    doc="the solve prompt of every generator that names none (default: one written for this kind)",
)

# How final answers are read from a candidate's text and compared, for voting and grading:
# `answer math` in a file; without one, `number`.
ANSWERS: dict[str, Signature] = {
    s.name: s
    for s in (
        Signature(
            "number",
            "answer",
            (_ANSWER_PROMPT,),
            'a number: the last "\\boxed{...}", "#### ...", "The answer is ..." or "Answer: ...", else '
            "the last number in the text; 1,200 = 1200.0 = 1.2e3",
        ),
        Signature(
            "math",
            "answer",
            (_ANSWER_PROMPT,),
            'a mathematical answer in LaTeX or plain text, the last "\\boxed{...}" or "The answer is ...": '
            "equal when math-verify finds them equivalent (\\frac{1}{2} = 0.5 = 1/2)",
        ),
        Signature(
            "choice",
            "answer",
            (Param("letters", "str", "ABCDE", doc="the option letters, in order"), _ANSWER_PROMPT),
            'a multiple-choice letter: "The answer is (B)", "Answer: B", "\\boxed{B}", or a last line "B"',
        ),
        Signature(
            "regex",
            "answer",
            (
                Param("pattern", "str", doc="a Python regular expression; its first group, else the whole match"),
                _ANSWER_PROMPT,
            ),
            "the text of the pattern's last match, compared after normalization (case, spaces, numbers)",
        ),
        Signature(
            "registered",
            "answer",
            (Param("name", "str", doc="the name given to ttcl.register_answer"), _ANSWER_PROMPT),
            "a Python extractor (and optional equivalence) registered through the API (ttcl.register_answer)",
        ),
    )
}
DEFAULT_ANSWER = {"kind": "number"}

# Verifiers that exist without a declaration. `oracle` grades against the ground truth, so it
# scores whole answers only and serves evaluation and oracle difficulty. `confidence` scores a
# whole answer by its own sampled tokens' probabilities (no verifier pass; see
# `runtime.verifiers`), so generators ask for log-probabilities where a program uses it.
# `prm`, when a program uses it without declaring it, is the shipped head trained on SmolLM2
# (for a SmolLM2 policy) or the policy's self-verification (see `lower.default_prm`).
BUILTIN_VERIFIERS: dict[str, dict[str, Any]] = {
    "oracle": {"kind": "oracle", "agg": "last", "steps": False},
    "confidence": {"kind": "confidence", "agg": "last", "steps": False},
    "prm": {"kind": "prm", "agg": "last"},
}

DEFAULT_MODEL = {"kind": "llama", "path": "smollm2-135m"}
DEFAULT_MODEL_NAME = "policy"

# `prm` is also what programs conventionally call their verifier (`verifier prm = ...`), so a
# declaration may take that name and hides the default.
RESERVED = (set(STAGES) | set(MODELS) | set(VERIFIERS) | set(BUILTIN_VERIFIERS) | {"difficulty"}) - {"prm"}


def step_level(verifier: dict) -> bool:
    """Whether a resolved verifier declaration scores individual steps (a PRM)."""
    return verifier["kind"] != "oracle" and verifier.get("steps", True)


# The undeclared `prm` verifier reads this head, shipped in the package's heads/, where the
# policy is the model it was trained on (by name or file); elsewhere it is self-verification.
DEFAULT_HEAD = "arith.safetensors"
DEFAULT_HEAD_MODELS = ("smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf")
