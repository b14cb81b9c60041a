"""Configurations: the choices come from the registries, and a configuration is a plain value."""

import pytest

from retrieval import config, distances, pooling, ranking, whitening
from retrieval.config import ExtractorConfig, SearchConfig


def test_choices_are_the_registries_keys():
    assert config.METRICS == tuple(distances.METRICS)
    assert config.RERANKS == tuple(ranking.RERANKS)
    assert config.WHITENINGS == tuple(whitening.FITTERS)
    assert config.DEFAULT_GEM_P == pooling.DEFAULT_GEM_P == ExtractorConfig().gem_p
    assert {config.DEFAULT_METRIC, config.DEFAULT_RERANK, config.DEFAULT_WHITEN} <= {
        *config.METRICS, *config.RERANKS, *config.WHITENINGS}


@pytest.mark.parametrize("field, value", [("metric", "chebyshev"), ("rerank", "mmr"), ("whiten", "zca"),
                                          ("index", "hnsw")])
def test_unknown_choices_are_refused_with_the_known_ones(field, value):
    with pytest.raises(ValueError, match="choose one of"):
        SearchConfig(**{field: value})


def test_resolving_fills_in_what_the_backbone_implies():
    from retrieval.backbones import REGISTRY, resolve

    cnn = resolve(ExtractorConfig())
    assert cnn.input_size == REGISTRY[cnn.backbone].input_size and cnn.gem_p == config.DEFAULT_GEM_P
    assert resolve(ExtractorConfig(pooling="mac")).gem_p == 0.0  # p means nothing without GeM: one key
    hand = resolve(ExtractorConfig(backbone="colorhist", pooling="gem", gem_p=5.0, input_size=999))
    assert (hand.pooling, hand.gem_p, hand.input_size) == ("none", 0.0, REGISTRY["colorhist"].input_size)
    assert resolve(hand) == hand
    with pytest.raises(TypeError):
        REGISTRY["mine"] = REGISTRY["colorhist"]  # trained models belong to a Studio, not to this module
