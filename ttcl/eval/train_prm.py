"""`ttcl train-prm`: a process reward model head trained from Monte Carlo rollouts.

As in Snell et al. 2024 (§5.2, after Math-Shepherd), a step's label is the fraction of
rollouts from the end of that step that reach the right answer:

1. The policy samples `samples` solutions per question (batched on the runtime's backend).
2. Each step but the last of each solution is continued by `rollouts` samples from that
   point; its label is the fraction that end in the right answer. The last step's label is
   whether the solution itself is right (its one completion is the solution).
3. The features of a step are the policy's final hidden state at the step's end, in the
   context the policy solved the question in (what `prm(...)` reads at run time).
4. A small MLP (`ttcl.prm.Head`) is fitted to the soft labels with cross-entropy (torch, on
   the CPU), on 4 of every 5 questions; the fifth is held out for the card's figures: step
   label accuracy and AUROC, beside the policy's own self-verification on the same steps.

Every question's solutions, labels and features are appended to `<out>.steps.jsonl` as it
finishes, and training saves a checkpoint every `CHECKPOINT_EVERY` epochs, so `--resume`
continues an interrupted run where it stopped. The head goes to `<out>` and its card to
`<out>` with the suffix `.json`.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ttcl.backends.base import GenerationRequest, SamplingParams
from ttcl.errors import UsageError
from ttcl.prompts import DEFAULT_DELIMITER, head_messages, split_steps, verify_messages
from ttcl.runtime.answers import extract_answer, same_answer
from ttcl.runtime.prm import Head, step_prefixes
from ttcl.source import NotJSON, parse_json

CHECKPOINT_EVERY = 50
HELD_OUT_EVERY = 5  # question i is held out when i % 5 == 4


@dataclass
class Settings:
    """How the data is made and the head trained (recorded in the card)."""

    samples: int = 4  # solutions per question
    rollouts: int = 4  # continuations per step
    max_steps: int = 4  # steps labelled per solution (later steps merge into the last)
    temperature: float = 0.8
    max_tokens: int = 96
    seed: int = 0
    epochs: int = 300
    hidden: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    batch_questions: int = 8  # questions whose solutions and rollouts decode together


# --------------------------------------------------------------------------- the data


def _encode(row: Any) -> str:
    return base64.b64encode(row.astype("float16").tobytes()).decode()


def _decode(text: str) -> Any:
    import numpy as np

    return np.frombuffer(base64.b64decode(text), dtype=np.float16).astype(np.float32)


def _request(question: str, prefix: str, params: SamplingParams) -> GenerationRequest:
    return GenerationRequest(messages=head_messages(question), prefix=prefix, params=params)


def _steps(text: str, most: int) -> list[str]:
    steps = split_steps(text)
    return steps[: most - 1] + [DEFAULT_DELIMITER.join(steps[most - 1 :])] if len(steps) > most else steps


def label_batch(backend, questions: list[tuple[int, dict]], s: Settings) -> list[dict]:
    """Sample solutions to `questions` ((index, question) pairs), label every step by
    rollouts, and read each step's features: one record per question."""

    def params(*key: int) -> SamplingParams:
        # mypy misses the defaults of SamplingParams' positional `Field(default, ...)` arguments
        return SamplingParams(  # type: ignore[call-arg]
            temperature=s.temperature, max_tokens=s.max_tokens, seed=hash((s.seed,) + key) & 0x7FFFFFFF
        )

    keys = [(i, q, k) for i, q in questions for k in range(s.samples)]
    firsts = backend.generate([_request(q["question"], "", params(i, k)) for i, q, k in keys])
    solutions = [(i, q, _steps(g.text, s.max_steps), g.text) for (i, q, _), g in zip(keys, firsts)]
    # every step but the last: rollouts from just after it
    asks = [
        (n, j, prefix) for n, (_, _, steps, _) in enumerate(solutions) for j, prefix in step_prefixes(steps, True)[:-1]
    ]
    rolled = backend.generate(
        [
            _request(solutions[n][1]["question"], prefix + DEFAULT_DELIMITER, params(n, j, r, 7))
            for n, j, prefix in asks
            for r in range(s.rollouts)
        ]
    )
    labels = [[0.0] * len(steps) for _, _, steps, _ in solutions]
    for a, (n, j, prefix) in enumerate(asks):
        runs = rolled[a * s.rollouts : (a + 1) * s.rollouts]
        right = [
            same_answer(extract_answer(prefix + DEFAULT_DELIMITER + g.text), solutions[n][1]["answer"]) for g in runs
        ]
        labels[n][j] = sum(right) / len(right)
    for n, (_, q, _, text) in enumerate(solutions):
        labels[n][-1] = float(same_answer(extract_answer(text), q["answer"]))
    return _records(backend, solutions, labels)


def _records(backend, solutions: list, labels: list[list[float]]) -> list[dict]:
    """Features and the policy's self-verification for every step, grouped by question."""
    at = [(n, j, prefix) for n, (_, _, steps, _) in enumerate(solutions) for j, prefix in step_prefixes(steps, True)]
    features = backend.hidden_states(
        # mypy misses the defaults of SamplingParams' positional `Field(default, ...)` arguments
        [_request(solutions[n][1]["question"], prefix, SamplingParams()) for n, _, prefix in at]  # type: ignore[call-arg]
    )
    verify = backend.next_token_probs(
        [
            GenerationRequest(messages=verify_messages(solutions[n][1]["question"], solutions[n][2][: j + 1]))
            for n, j, _ in at
        ],
        ["Yes", "No"],
    )
    records: dict[int, dict] = {}
    for (n, j, _), row, (yes, no) in zip(at, features, verify):
        i, q, steps, text = solutions[n]
        rec = records.setdefault(
            i, {"index": i, "question": q["question"], "answer": q["answer"], "level": q.get("level"), "solutions": []}
        )
        if j == 0:
            rec["solutions"].append(
                {"text": text, "steps": steps, "labels": labels[n], "features": [], "self_verify": []}
            )
        sol = rec["solutions"][-1]
        sol["features"].append(_encode(row))
        sol["self_verify"].append(yes / (yes + no) if yes + no > 0 else 0.5)
    return list(records.values())


def collect(
    backend,
    questions: list[dict],
    path: Path,
    s: Settings,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> list[dict]:
    """Label every question not yet in the data file, appending each batch's records as it
    finishes; returns all records. Ctrl-C keeps what was written. `progress(done, total)` is
    told the questions labelled before any work (those the file holds), then after each batch."""
    records = read_data(path)
    done = {r["index"] for r in records}
    todo = [(i, q) for i, q in enumerate(questions) if i not in done]
    progress(len(records), len(questions))
    with open(path, "a", encoding="utf-8") as f:
        for start in range(0, len(todo), s.batch_questions):
            for rec in label_batch(backend, todo[start : start + s.batch_questions], s):
                f.write(json.dumps(rec) + "\n")
                records.append(rec)
            f.flush()
            os.fsync(f.fileno())
            progress(len(records), len(questions))
    return sorted(records, key=lambda r: r["index"])


def read_data(path: Path) -> list[dict]:
    """The records in a data file; a torn last line (a killed process) is dropped."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for n, line in enumerate(lines):
        try:
            records.append(parse_json(line))
        except NotJSON:
            if n < len(lines) - 1:
                raise UsageError(f"{path}:{n + 1}: not a JSON record; delete the file to start over") from None
            path.write_text("".join(x + "\n" for x in lines[:-1]), encoding="utf-8")
    return records


def arrays(records: list[dict]) -> tuple[Any, Any, Any, Any, Any]:
    """Features, labels, self-verification scores, question indices and last-step mask."""
    import numpy as np

    rows, labels, verify, index, last = [], [], [], [], []
    for rec in records:
        for sol in rec["solutions"]:
            for j, (f, y, v) in enumerate(zip(sol["features"], sol["labels"], sol["self_verify"])):
                rows.append(_decode(f))
                labels.append(y)
                verify.append(v)
                index.append(rec["index"])
                last.append(j == len(sol["labels"]) - 1)
    return (np.stack(rows), np.array(labels, np.float32), np.array(verify, np.float32), np.array(index), np.array(last))


# --------------------------------------------------------------------------- training


WEIGHT_DECAYS = (0.1, 1.0, 10.0)
EPOCH_CHOICES = (30, 100, 300)


def check_labels(y: Any, data: Path) -> None:
    """Refuse step labels all of one class (a step is good when at least half its rollouts
    reached the right answer): a head fitted to them scores every step alike, whatever the
    features, and would be written as if it had learned something."""
    good = y >= 0.5
    if good.any() and not good.all():
        return
    n = len(y)
    if good.all():
        what = "1 (every rollout reached the right answer)" if (y == 1).all() else "0.5 or more (good)"
        hint = (
            "harder questions (e.g. --dataset arith:3..5), more rollouts (--rollouts) or a higher --temperature, "
            "so that some steps go wrong"
        )
    else:
        what = "0 (no rollout reached the right answer)" if (y == 0).all() else "below 0.5 (bad)"
        hint = "easier questions (e.g. --dataset arith:1..2), more --samples per question or a stronger --model"
    raise UsageError(
        f"all {n} step labels are {what}: a head cannot learn to tell good steps from bad ones from them, "
        f"so none is written; use {hint}. The labelled steps are kept in {data}: delete it to label afresh"
    )


def choose_regularization(x: Any, y: Any, index: Any, s: Settings, log: Callable[[str], None] = print) -> Settings:
    """The weight decay and epochs with the least cross-entropy on a validation fifth of the
    training questions (so the held-out fifth stays unseen): the labels are few and mostly
    0, and an unregularized head learns the training questions by heart."""
    import numpy as np

    val = index % HELD_OUT_EVERY == HELD_OUT_EVERY - 2
    if val.all() or not val.any():
        return s
    best = None
    for wd in WEIGHT_DECAYS:
        for epochs in EPOCH_CHOICES:
            trial = Settings(**{**asdict(s), "weight_decay": wd, "epochs": epochs})
            p = np.clip(fit(x[~val], y[~val], trial, None).score(x[val]), 1e-6, 1 - 1e-6)
            loss = float(-(y[val] * np.log(p) + (1 - y[val]) * np.log(1 - p)).mean())
            if best is None or loss < best[0]:
                best = (loss, trial)
    assert best is not None  # WEIGHT_DECAYS and EPOCH_CHOICES are not empty
    log(f"validation chose weight decay {best[1].weight_decay}, {best[1].epochs} epochs (loss {best[0]:.4f})")
    return best[1]


def fit(x: Any, y: Any, s: Settings, checkpoint: Path | None, log: Callable[[str], None] = print) -> Head:
    """Fit the head to soft labels with binary cross-entropy (full batch, AdamW), resuming
    from `checkpoint` when it was saved for the same data and settings."""
    import numpy as np
    import torch

    torch.manual_seed(s.seed)
    mean, std = x.mean(0), x.std(0) + 1e-4
    xt = torch.tensor((x - mean) / std)
    yt = torch.tensor(y)
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], s.hidden), torch.nn.GELU(approximate="tanh"), torch.nn.Linear(s.hidden, 1)
    )
    opt = torch.optim.AdamW(net.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    key = f"{len(y)}:{float(y.sum()):.4f}:{s.hidden}:{s.lr}:{s.weight_decay}:{s.seed}"
    start = 0
    if checkpoint is not None and checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False)
        if saved.get("key") == key:
            net.load_state_dict(saved["net"])
            opt.load_state_dict(saved["opt"])
            start = saved["epoch"]
            log(f"resuming training at epoch {start}")
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for epoch in range(start, s.epochs):
        opt.zero_grad()
        loss = loss_fn(net(xt)[:, 0], yt)
        loss.backward()
        opt.step()
        if checkpoint is not None and ((epoch + 1) % CHECKPOINT_EVERY == 0 or epoch + 1 == s.epochs):
            torch.save({"key": key, "net": net.state_dict(), "opt": opt.state_dict(), "epoch": epoch + 1}, checkpoint)
            log(f"epoch {epoch + 1}: loss {loss.item():.4f}")
    w = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    tensors = {
        "w1": w["0.weight"],
        "b1": w["0.bias"],
        "w2": w["2.weight"],
        "b2": w["2.bias"],
        "mean": mean.astype(np.float32),
        "std": std.astype(np.float32),
    }
    return Head(tensors, {})


def auroc(scores: Any, positive: Any) -> float | None:
    """The probability that a random positive outranks a random negative (ties count half);
    None without both classes."""
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return None
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def held_out_figures(head: Head, x: Any, y: Any, verify: Any, held: Any, last: Any) -> dict:
    """The card's figures on the held-out questions' steps: a step counts as good when at
    least half its rollouts were right."""
    import numpy as np

    scores, good = head.score(x[held]), y[held] >= 0.5
    final = last[held]
    return {
        "steps": int(held.sum()),
        "good_fraction": round(float(good.mean()), 4) if held.any() else None,
        "accuracy": round(float(((scores >= 0.5) == good).mean()), 4) if held.any() else None,
        "majority_class_accuracy": round(float(max(good.mean(), 1 - good.mean())), 4) if held.any() else None,
        "auroc": _round(auroc(scores, good)),
        "self_verify_auroc": _round(auroc(verify[held], good)),
        "last_step_auroc": _round(auroc(scores[final], good[final])),
        "self_verify_last_step_auroc": _round(auroc(verify[held][final], good[final])),
        "mean_abs_error": round(float(np.abs(scores - y[held]).mean()), 4) if held.any() else None,
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def card(records: list[dict], y: Any, held: Any, s: Settings, figures: dict, base: dict, seconds: float) -> dict:
    """The JSON card: what the head was trained on and how well it does."""
    import numpy as np

    hist, _ = np.histogram(y, bins=5, range=(0.0, 1.0))
    return {
        **base,
        "questions": len(records),
        "held_out_questions": sum(r["index"] % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 for r in records),
        "solutions": sum(len(r["solutions"]) for r in records),
        "solutions_correct": round(float(np.mean([sol["labels"][-1] for r in records for sol in r["solutions"]])), 4),
        "steps": int(len(y)),
        "train_steps": int((~held).sum()),
        "labels": {
            "mean": round(float(y.mean()), 4),
            "good_fraction": round(float((y >= 0.5).mean()), 4),
            "histogram_0_to_1_in_fifths": hist.tolist(),
        },
        "settings": asdict(s),
        "held_out": figures,
        "seconds": round(seconds, 1),
    }


def train(
    backend,
    questions: list[dict],
    out: Path,
    s: Settings,
    base: dict,
    resume: bool = False,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """The whole of `ttcl train-prm`: collect (or resume) the data, fit, evaluate, write the
    head and its card; returns the card. `progress(done, total)` follows the labelling (by
    default, `log` says how far it is); labels of one class are refused before any fitting."""
    data, checkpoint = out.with_suffix(".steps.jsonl"), out.with_suffix(".ckpt.pt")
    if data.exists() and not resume:
        raise UsageError(f"{data} exists: pass --resume to continue it, or delete it to start over")
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    records = collect(
        backend, questions, data, s, progress or (lambda done, total: log(f"labelled {done}/{total} questions"))
    )
    x, y, verify, index, last = arrays(records)
    held = index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
    if held.all() or not held.any():
        raise UsageError("too few questions to hold some out: use --limit 10 or more")
    check_labels(y[~held], data)
    s = choose_regularization(x[~held], y[~held], index[~held], s, log)
    head = fit(x[~held], y[~held], s, checkpoint, log)
    figures = held_out_figures(head, x, y, verify, held, last)
    info = card(records, y, held, s, figures, base, time.perf_counter() - started)
    head = Head(
        head.tensors,
        {
            "base_model": base.get("base_model", ""),
            "hidden_size": str(x.shape[1]),
            "card": out.with_suffix(".json").name,
        },
    )
    head.save(out)
    out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


# --------------------------------------------------------------------------- the command
