"""Pure logic of fedpafi: mask, adapter, methods, codecs, data, model, metrics, training.

Nothing in this package imports Flower, so every piece can be tested and reused alone.
"""
