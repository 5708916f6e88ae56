"""The lesion model: network, pre-processing, inference and bundled weights.

Only torch and numpy are imported (``network``, ``preprocessing``, ``inference``, ``weights``),
so the model runs wherever torch does; training it is the ``training`` package's work. Import
the submodules directly; importing this package does not import torch.
"""
