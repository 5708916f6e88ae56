"""The lesion model: network, pre-processing, inference, bundled weights and training.

Only torch and numpy are imported by the inference path (``network``, ``preprocessing``,
``inference``, ``weights``) so the model runs wherever torch does; training also uses the
study generator and the nnU-Net reader (SimpleITK). Import the submodules directly;
importing this package does not import torch.
"""
