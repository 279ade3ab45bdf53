"""The plumbing of the seven GAN scripts, one module per concern. Nothing here imports
common.py or a model file; the model files reach it through common.py.

    errors      UserError (exit 2), Diverged (exit 1)
    cli         the shared flags, the Hyper declaration a model file writes its own with,
                argparse types, the flags a resumed run may change
    data        the sources (digits, stacked-digits, mnist, cifar10, a folder) and decoding
    batches     Batches: endless shuffled batches, resumable to the exact batch
    scale       devices, torchrun ranks, autocast, channels_last, --compile, EMA
    images      grids, PNG, GIF, slerp, the timeline of a run's grids
    checkpoint  save (atomic), load (weights_only), restore, a model from its checkpoint
    logs        the progress bar and the run directory's writer (one per metrics row)
    loop        train(): the training loop, stop and divergence handling
    sample      samples and latent walks from a checkpoint
    metrics     the offline quality metrics (a digit classifier as the judge)
    evaluation  scoring a model or the real data, the --eval-every callback, tables
    nearest     the memorisation check (evaluate.py --nearest)
    augment     DiffAugment (--augment)
    checks      what a run checks before data or files: values, memory, --out, the lock
    curves      learning curves from a comparison's runs or its recorded tables (matplotlib)
"""
