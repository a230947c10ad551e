"""Label values outside the model's classes: evaluation, the training data and the loss refuse them alike."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from vitseg._labels import label_problem
from vitseg.eval.evaluate import _label_problem
from vitseg.train.dataset import check_label_values
from vitseg.train.loss import _check_batch

SAME = r"holds value\(s\) 3 outside the model's 3 classes \(0 to 2; 255 is ignored\)\. If classes are numbered from 1"


def _label(rng: np.random.Generator) -> np.ndarray:
    label = rng.integers(1, 4, (6, 7))  # numbered 1..3 for a 3-class model
    label[0] = 255
    return label


def test_the_three_checks_give_one_message() -> None:
    label = _label(np.random.default_rng(4))
    problem = _label_problem(dict(label=torch.as_tensor(label), label_path="ann/7.png"), 7, 3, 255, False)
    assert problem is not None and re.match("Label ann/7.png " + SAME, problem)
    with pytest.raises(ValueError, match="^Label ann/7.png " + SAME):
        check_label_values(label, "ann/7.png", 3, 255)
    with pytest.raises(ValueError, match="^The training batch " + SAME):
        _check_batch(torch.zeros(1, 3, 6, 7), torch.as_tensor(label)[None], 3, 255)


def test_hints_follow_the_values() -> None:
    rng = np.random.default_rng(5)
    assert label_problem(rng.choice([0, 1, 2, 255], (5, 5)), "label x", 3, 255) is None
    many = label_problem(np.arange(20), "label x", 3, 255)
    assert "3, 4, 5, 6, 7, 8, 9, 10, 11, 12, ... (17 values)" in many and "--num-classes 20" in many
    assert "reduce_zero_label" in many  # the smallest bad value is the class count: numbered from 1?
    assert "reduce_zero_label" not in label_problem(np.array([0, 1, 7]), "label x", 3, 255)
    assert "reduce_zero_label" not in label_problem(np.array([1, 3]), "label x", 3, 255, reduce_zero_label=True)
    negative = label_problem(np.array([-1, 0, 2]), "label x", 3, 255)
    assert "value(s) -1 outside" in negative and "class indices >= 0" in negative
    assert "(2 more label files" in label_problem(np.array([5]), "label x", 3, 255, more_files=2)
