"""`ttcl train-prm`: label a dataset's solution steps with the policy, fit a PRM head, and
write it with its card (the library work is `ttcl.eval.train_prm`)."""

from __future__ import annotations

import os
from pathlib import Path

from ttcl.backends import backend_for
from ttcl.cli.present import fields_of, progress_bar, report_skipped, wrote
from ttcl.cli.progress import Meter
from ttcl.errors import UsageError
from ttcl.eval.datasets import load
from ttcl.eval.train_prm import Settings, train


def train_prm_command(args, out, err) -> int:
    """`ttcl train-prm --model M --dataset D -o HEAD`: label, train, write head and card."""
    if not args.output.endswith(".safetensors"):
        raise UsageError(f"-o/--output names a .safetensors file, not {args.output}")
    settings = Settings(
        samples=args.samples,
        rollouts=args.rollouts,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        seed=args.seed,
    )
    data = load(args.dataset, args.limit, args.seed, args.strict, fields_of(args))
    report_skipped(data.skipped, err)
    backend = backend_for({"kind": args.backend, "path": args.model, "n_ctx": 2048})
    base = {
        "base_model": args.model,
        "backend": args.backend,
        "dataset": args.dataset,
        "model_file": os.path.basename(getattr(backend, "path", args.model)),
    }
    head = Path(args.output)
    progress = progress_bar(err)
    try:
        with progress:
            meter = Meter(progress, "labelling questions", len(data.questions))
            info = train(
                backend,
                data.questions,
                head,
                settings,
                base,
                args.resume,
                log=lambda text: err.print(f"[dim]{text}[/]"),
                progress=lambda done, total: meter.reach(done),
            )
    except KeyboardInterrupt:
        steps = head.with_suffix(".steps.jsonl")
        err.print(f"[yellow]interrupted[/]: the labelled questions are saved in {steps}; run again with --resume")
        return 130
    h = info["held_out"]
    wrote(head, "the PRM head")
    wrote(head.with_suffix(".json"), "its card: base model, dataset, held-out accuracy")
    wrote(head.with_suffix(".steps.jsonl"), "the labelled steps, which --resume reuses")
    wrote(head.with_suffix(".ckpt.pt"), "the training checkpoint, which --resume continues")
    out.print(f"{info['steps']} steps from {info['questions']} questions, {h['steps']} held out")
    out.print(
        f"held-out step accuracy {h['accuracy']} (majority class {h['majority_class_accuracy']}), "
        f"AUROC {h['auroc']} against self-verification's {h['self_verify_auroc']}"
    )
    return 0
