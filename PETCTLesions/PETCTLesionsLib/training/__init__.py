"""Training the lesion model (needs torch): above detection, which validation runs as users do.

``data`` prepares training cases (an nnU-Net dataset or generated patients) in worker processes
and samples patches lesion by lesion; ``train`` runs the training loop (augmentation, loss, AMP,
checkpoints, validation with the autoPET metrics, DDP under torchrun). Import the submodules
directly; importing this package does not import torch.
"""
