"""What a run returns: candidates, the chosen answer, measured cost and the trace (pydantic)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Candidate(BaseModel):
    """One attempt at the question: its text split into steps, its answer and its scores."""

    model_config = ConfigDict(extra="forbid")

    id: int
    node: int  # the IR node that produced it
    text: str
    steps: list[str]
    answer: str | None
    scores: dict[str, list[float]] = Field(default_factory=dict)  # verifier -> per-step scores
    score: float | None = None  # the aggregated score of the verifier that last ranked it
    prompt_tokens: int = 0
    generated_tokens: int = 0
    seed: int | None = None


class NodeCost(BaseModel):
    model_config = ConfigDict(extra="forbid")

    op: str
    generations: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    verifier_prompt_tokens: int = 0
    flops: float | None = None  # measured (see `Cost.flops`)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.generated_tokens + self.verifier_prompt_tokens


class Cost(BaseModel):
    """Measured cost, in total and per IR node."""

    model_config = ConfigDict(extra="forbid")

    generations: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    verifier_prompt_tokens: int = 0
    # FLOPs of the tokens processed: counted by position where the backend can
    # (`ttcl.facts.counted_flops`), else 2·N per token, else unknown (None)
    flops: float | None = None
    per_node: dict[int, NodeCost] = Field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.generated_tokens + self.verifier_prompt_tokens


class TraceEvent(BaseModel):
    """One thing that happened: a node finishing, a batch sent, a verifier pass."""

    model_config = ConfigDict(extra="forbid")

    event: Literal["node", "batch", "score", "difficulty", "stop"]
    node: int | None = None
    op: str | None = None
    detail: dict = Field(default_factory=dict)


class Result(BaseModel):
    """The outcome of running a program on one question."""

    model_config = ConfigDict(extra="forbid")

    question: str
    answer: str | None
    text: str | None = None  # the chosen candidate's full text
    candidates: list[Candidate] = Field(default_factory=list)
    cost: Cost = Field(default_factory=Cost)
    stopped: Literal["budget", "time", "interrupted"] | None = None  # why it ended early
    bin: int | None = None  # the difficulty bin, for programs with a match
    seed: int = 0
    elapsed_s: float = 0.0
    trace: list[TraceEvent] = Field(default_factory=list)
