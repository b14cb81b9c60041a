import numpy as np
import pytest

from retrieval.evaluation import (
    agreement,
    average_precision,
    exact_duplicate_groups,
    kendall_tau_top_k,
    leave_one_out,
    ndcg_at_k,
    precision_at_k,
    query_gallery,
    recall_at_k,
    spearman_full,
)

LABELS = ["a", "a", "b", "a", "b"]
ORDERS = {0: [0, 2, 1, 4, 3], 1: [1, 0, 3, 2, 4], 2: [2, 4, 0, 1, 3], 3: [3, 2, 4, 0, 1], 4: [4, 0, 1, 3, 2]}


def _rank(rows, _exclude):
    return np.array([ORDERS[r] for r in rows])


def test_single_list_measures_by_hand():
    hits = np.array([False, True, False, True])
    assert average_precision(hits, 2) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert precision_at_k(hits, 2) == 0.5
    assert recall_at_k(hits, 1, 2) == 0.0
    assert ndcg_at_k(hits, 10, 2) == pytest.approx((1 / np.log2(3) + 1 / np.log2(5)) / (1 + 1 / np.log2(3)))


def test_leave_one_out_hand_checked_figures():
    report = leave_one_out(LABELS, _rank)
    assert report.queries == 5
    # per-query AP: 0.5, 1, 1, 5/12, 0.25
    assert report.map == pytest.approx((0.5 + 1 + 1 + 5 / 12 + 0.25) / 5)
    assert report.p_at[1] == pytest.approx(0.4)
    assert report.p_at[5] == pytest.approx(0.32)
    assert report.r_at[1] == pytest.approx(0.3)
    assert report.r_at[10] == pytest.approx(1.0)
    assert report.ndcg_at_10 == pytest.approx(0.7304482, abs=1e-6)
    assert report.per_class_ap["a"] == pytest.approx((0.5 + 1 + 5 / 12) / 3)
    assert report.per_class_ap["b"] == pytest.approx(0.625)
    assert report.precision_curve[0] == pytest.approx(0.4)


def test_excluded_rows_are_removed_before_counting():
    # Row 1 duplicates row 0: excluding it leaves query 0 with one relevant item (row 3).
    exclude = [np.array([1]), np.array([0]), np.array([], int), np.array([], int), np.array([], int)]
    report = leave_one_out(LABELS, _rank, exclude)
    # query 0: [2, 4, 3] -> AP 1/3 ; query 1: [3, 2, 4] -> AP 1
    ap_q0, ap_q1 = 1 / 3, 1.0
    assert report.per_class_ap["a"] == pytest.approx((ap_q0 + ap_q1 + (1 / 3 + 2 / 4) / 2) / 3)


def test_unlabelled_rows_are_distractors_not_queries():
    labels = ["a", "a", None]
    orders = {0: [0, 2, 1], 1: [1, 0, 2]}
    report = leave_one_out(labels, lambda rows, _: np.array([orders[r] for r in rows]))
    assert report.queries == 2
    assert report.map == pytest.approx((0.5 + 1.0) / 2)


def test_exact_duplicate_groups():
    v = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
    groups = exact_duplicate_groups(v)
    assert groups[0].tolist() == [2] and groups[1].tolist() == [] and groups[2].tolist() == [0]


def test_agreement_by_hand():
    a, b = np.array([0, 1, 2, 3]), np.array([1, 0, 2, 3])
    assert spearman_full(a, b) == pytest.approx(0.8)
    assert kendall_tau_top_k(a, b, 2) == pytest.approx(-1.0)
    result = agreement(a[None], b[None], k=2)
    assert result.overlap_at_k == 1.0
    same = agreement(a[None], a[None], k=3)
    assert (same.overlap_at_k, same.kendall_tau, same.spearman_rho) == (1.0, 1.0, 1.0)


def test_query_gallery_matches_full_sort_measures():
    """The sort-free AP and the top-k measures agree with scoring a full argsort."""
    rng = np.random.default_rng(3)
    gallery_labels = list(rng.choice(["a", "b", "c"], 300))
    query_labels = list(rng.choice(["a", "b", "c", "z"], 40))  # "z" has nothing to find: skipped
    keys = rng.normal(size=(40, 300)).astype(np.float32)
    report = query_gallery(query_labels, gallery_labels, lambda rows: keys[rows], chunk=7)
    expected_ap, expected_p10, expected_r5 = [], [], []
    for i, label in enumerate(query_labels):
        if label == "z":
            continue
        hits = np.array(gallery_labels)[np.argsort(-keys[i])] == label
        expected_ap.append(average_precision(hits, hits.sum()))
        expected_p10.append(precision_at_k(hits, 10))
        expected_r5.append(recall_at_k(hits, 5, hits.sum()))
    assert report.queries == len(expected_ap) < 40
    assert report.map == pytest.approx(np.mean(expected_ap), abs=1e-9)
    assert report.p_at[10] == pytest.approx(np.mean(expected_p10))
    assert report.r_at[5] == pytest.approx(np.mean(expected_r5))


def test_query_gallery_perfect_ranking_scores_one():
    gallery_labels = ["a"] * 5 + ["b"] * 5
    keys = np.array([[1.0] * 5 + [0.0] * 5, [0.0] * 5 + [1.0] * 5]) + np.linspace(0, 0.01, 10)
    report = query_gallery(["a", "b"], gallery_labels, lambda rows: keys[rows])
    assert report.map == pytest.approx(1.0)
    assert report.p_at[5] == pytest.approx(1.0)
