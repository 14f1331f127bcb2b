import math

import numpy as np
import pytest

from xreflect.evaluation.metrics import topk_metrics

pytestmark = pytest.mark.usefixtures("on_test_device")  # cuda with XREFLECT_TEST_DEVICE=cuda

L = lambda *v: np.array([v], dtype=bool)  # noqa: E731


def test_precision_recall_ndcg_by_hand():
    scores = np.array([[0.9, 0.8, 0.7, 0.1]])
    labels = L(True, False, True, False)
    m = topk_metrics(scores, labels, np.ones_like(labels), [1, 2, 3])
    assert m["precision@1"] == 1.0 and m["recall@1"] == 0.5 and m["ndcg@1"] == 1.0
    assert m["precision@2"] == 0.5 and m["recall@2"] == 0.5
    assert math.isclose(m["ndcg@2"], 1 / (1 + 1 / math.log2(3)))
    assert math.isclose(m["precision@3"], 2 / 3) and m["recall@3"] == 1.0
    assert math.isclose(m["ndcg@3"], (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))


def test_ties_do_not_favour_positives():
    labels = L(True, False, False)
    constant = topk_metrics(np.zeros((1, 3)), labels, np.ones_like(labels), [1, 2, 3])
    assert constant["precision@1"] == 0.0 and constant["recall@2"] == 0.0
    assert constant["recall@3"] == 1.0 and math.isclose(constant["ndcg@3"], 1 / math.log2(4))
    # A positive tied with one negative ranks after it.
    tied = topk_metrics(np.array([[0.5, 0.5, 0.1]]), labels, np.ones_like(labels), [1])
    assert tied["recall@1"] == 0.0


def test_padding_never_counts_and_means_are_over_users():
    scores = np.array([[0.9, 5.0, 0.1], [0.1, 0.2, 0.3]])
    labels = np.array([[True, False, False], [False, False, True]])
    mask = np.array([[True, False, True], [True, True, True]])  # user 0's middle slot is padding
    m = topk_metrics(scores, labels, mask, [1])
    assert m["precision@1"] == 1.0  # both users rank their positive first once padding is ignored


def test_ndcg_ideal_uses_at_most_k_positives():
    scores = np.array([[3.0, 2.0, 1.0, 0.0]])
    labels = L(True, True, True, False)
    m = topk_metrics(scores, labels, np.ones_like(labels), [2])
    assert m["ndcg@2"] == 1.0 and math.isclose(m["recall@2"], 2 / 3)


def test_k_larger_than_the_candidate_list():
    scores = np.array([[0.9, 0.1]])
    labels = L(True, False)
    m = topk_metrics(scores, labels, np.ones_like(labels), [10])
    assert m["precision@10"] == 0.1 and m["recall@10"] == 1.0 and m["ndcg@10"] == 1.0
