"""`ttcl train-prm` refuses step labels all of one class: on scripted rollouts that always, or
never, reach the right answer, it writes no head, says how to get usable data, and keeps the
labelled steps."""

import pytest

from ttcl.backends.fake import ScriptedBackend
from ttcl.errors import UsageError
from ttcl.eval.train_prm import Settings, read_data, train

QUESTIONS = [{"question": f"What is 2 + 3? (#{i})", "answer": "5"} for i in range(10)]


@pytest.mark.parametrize(
    "answer, message",
    [
        ("5", r"all \d+ step labels are 1 \(every rollout reached the right answer\).*arith:3\.\.5.*--rollouts"),
        ("7", r"all \d+ step labels are 0 \(no rollout reached the right answer\).*arith:1\.\.2.*--samples"),
    ],
)
def test_labels_of_one_class_write_no_head_and_say_how_to_get_usable_data(tmp_path, answer, message):
    def script(request):
        return f"First I add the numbers.\n\nThe answer is {answer}."

    out = tmp_path / "head.safetensors"
    progress = []
    with pytest.raises(UsageError, match=message) as caught:
        train(
            ScriptedBackend(script),
            QUESTIONS,
            out,
            Settings(samples=2, rollouts=2, batch_questions=5),
            {},
            log=lambda _: None,
            progress=lambda done, total: progress.append((done, total)),
        )
    assert "so none is written" in str(caught.value) and f"kept in {out.with_suffix('.steps.jsonl')}" in str(
        caught.value
    )
    assert not out.exists() and not out.with_suffix(".json").exists() and not out.with_suffix(".ckpt.pt").exists()
    assert len(read_data(out.with_suffix(".steps.jsonl"))) == len(QUESTIONS)  # the labelling is kept
    assert progress == [(0, 10), (5, 10), (10, 10)]  # before any work, then after each batch


def test_mixed_labels_pass_and_soft_labels_of_one_class_do_not():
    from pathlib import Path

    import numpy as np

    from ttcl.eval.train_prm import check_labels

    data = Path("d.steps.jsonl")
    check_labels(np.array([1.0, 0.0, 0.5]), data)
    with pytest.raises(UsageError, match=r"all 2 step labels are 0\.5 or more \(good\)"):
        check_labels(np.array([0.5, 0.75]), data)
    with pytest.raises(UsageError, match=r"all 2 step labels are below 0\.5 \(bad\)"):
        check_labels(np.array([0.25, 0.0]), data)
