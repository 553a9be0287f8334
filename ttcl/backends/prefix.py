"""Prompts that share a beginning are decoded once: the sequences a backend keeps in its KV
cache after a call (`PrefixCache`), where a new prompt can fork from one of them (`Fork`), and
the layout of a call's prompts as a token trie in preorder (`plan_prompts`). The llama.cpp and
torch backends both use them."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(frozen=True)
class Fork:
    """Where a prompt's first tokens are already in the cache: positions [0, length) of the
    cached sequence `source` (none: nothing cached, the prompt is decoded whole)."""

    source: int = -1
    length: int = 0

    @property
    def key(self) -> tuple[int, int]:
        return (self.source, self.length)


class PrefixCache:
    """The sequences left in the KV cache by earlier calls, by seq_id, with the tokens whose
    cells they hold (positions 0..n-1), least recently used first.

    A new request forks from the cached sequence that shares the longest prefix with its
    prompt. A pruned sequence is removed with `llama_memory_seq_rm`, but its cells are first
    given to a spare "retired" sequence that nothing attends to: freed cells would be holes
    that llama.cpp fills first, putting a sequence's newer tokens in lower cells than its
    older ones, and the attention's rounding would then depend on the cache's history. So
    cells are only ever appended, and freed all at once when the cache is cleared (when a
    call would not fit, or by `LlamaBackend.reset`)."""

    def __init__(self, n_ids: int):
        self.n_ids = n_ids  # seq_ids 0..n_ids-1 are for requests
        self.held: dict[int, list[int]] = {}

    def forks(self, prompts: list[list[int]]) -> list[Fork]:
        """For each prompt, the cached sequence sharing most of it (all but its last token at
        most: the last is decoded again for its logits)."""
        index = sorted((tokens, seq) for seq, tokens in self.held.items())
        keys = [tokens for tokens, _ in index]
        forks = []
        for prompt in prompts:
            at = bisect.bisect_left(keys, prompt)
            # the longest common prefix in a sorted list is with a neighbour of the insertion point
            best = Fork()
            for tokens, seq in index[max(at - 1, 0) : at + 1]:
                length = min(common_prefix(tokens, prompt), len(prompt) - 1)
                if length > best.length:
                    best = Fork(seq, length)
            forks.append(best)
        return forks

    def free_ids(self, n: int, keep: set[int]) -> tuple[list[int], list[int]]:
        """n seq_ids for new sequences, and the cached ones to retire to make room (least
        recently used first, never one in `keep`)."""
        free = [i for i in range(self.n_ids) if i not in self.held]
        retire = [seq for seq in self.held if seq not in keep][: max(0, n - len(free))]
        free += retire
        return sorted(free)[:n], retire

    def touch(self, seq: int) -> None:
        """Mark a cached sequence as just used."""
        self.held[seq] = self.held.pop(seq)


@dataclass
class PromptPlan:
    """The distinct prompt tokens of a chunk, laid out as a trie in preorder: every entry is
    decoded once, for all the sequences whose prompt passes through it."""

    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    seq_ids: list[list[int]] = field(default_factory=list)
    last: dict[int, int] = field(default_factory=dict)  # sequence -> entry of its last prompt token
    charged: dict[int, int] = field(default_factory=dict)  # sequence -> prompt tokens it decoded


def plan_prompts(prompts: list[list[int]], forks: list[Fork] | None = None) -> PromptPlan:
    """Lay out prompts (sequence i has prompt i) so shared prefixes are decoded once.

    Sorting puts the prompts that share most next to each other; each prompt then adds only
    the tokens after its common prefix with the one before it (a trie in preorder), and joins
    the seq_ids of the shared entries. Each sequence's entries come in position order, which
    keeps its KV cells in position order. A prompt with a fork already holds its first
    `fork.length` tokens (cells of a cached sequence); it shares entries only with prompts
    forked from the same cells, since a token attends to the cells of its first sequence."""
    plan = PromptPlan()
    forks = forks or [Fork() for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (forks[i].key, prompts[i], i))
    path: list[int] = []  # entries of the previous prompt's tokens, by position after its fork
    previous: list[int] = []
    previous_key: tuple[int, int] | None = None
    for seq in order:
        prompt, start = prompts[seq], forks[seq].length
        same_cells = forks[seq].key == previous_key
        shared = common_prefix(previous, prompt) - start if same_cells else 0
        del path[shared:]
        for entry in path:
            plan.seq_ids[entry].append(seq)
        for pos in range(start + shared, len(prompt)):
            path.append(len(plan.tokens))
            plan.tokens.append(prompt[pos])
            plan.positions.append(pos)
            plan.seq_ids.append([seq])
        plan.last[seq] = path[len(prompt) - start - 1]
        plan.charged[seq] = len(prompt) - start - shared
        previous, previous_key = prompt, forks[seq].key
    return plan
