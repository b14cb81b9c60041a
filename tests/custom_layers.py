"""A custom Keras layer for tests/test_user_models.py: deliberately not registered with Keras.

A model file that uses it loads only when the user names it
(``--custom-object tests.custom_layers:Scale``); safe mode never imports it.
"""

from __future__ import annotations

import keras


class Scale(keras.layers.Layer):
    """Multiplies its input by ``factor``: easy to check from the output."""

    def __init__(self, factor: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = float(factor)

    def call(self, x):
        return x * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}
