"""The pieces ``train_scripts/train_flow.py`` calls around its loop, one concept a module; each owns its flags.

- ``batches``: data flags, the loader, the resumable batch stream, batches into model space
- ``data``: training images as torch datasets (decoded, cached in memory, or streamed)
- ``latents``: VAE latents, encoded once and cached on disk
- ``architecture``: which DiT is trained (the embedded default, presets, flags)
- ``objectives``: noise levels, targets and loss weights on the model's path; label dropout
- ``ema``: the EMA weights, saved beside the model and swapped in for sampling
- ``checkpointing``: atomic ``checkpoint-<step>`` folders and resuming from them
- ``runtime``: the accelerator, CPU threads, per-step randomness, throughput, the log file
- ``scale_out``: which accelerate launch set-ups (DDP on several machines, FSDP2) the script honours
- ``sharding``: whole weights gathered from an FSDP2-sharded model and its EMA, and sliced back
- ``tracking``: metrics to ``train_log.jsonl`` and the trackers, images
- ``validation``: sample grids and the metric of ``--eval_steps``
- ``publish``: the saved pipeline with its grid, evaluation and model card, and the Hub upload
"""
