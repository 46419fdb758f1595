"""tinykd: distil a big Keras model into a tiny int8 one that runs on a Cortex-M, and prove it fits."""

__version__ = "0.1.0"
