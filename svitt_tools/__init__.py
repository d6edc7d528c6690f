"""What is not the SViTT model: model cards, token-selection pictures, analytic compute cost, evaluation metrics and
the opt-in hint for mistyped checkpoint names.

`modeling_svitt` never imports this package (and this package is never copied to the Hub): the model loads, trains
and runs as remote code without it.
"""
