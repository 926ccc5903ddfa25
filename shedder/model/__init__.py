"""Models: loading (zoo names, folders, hub ids, foreign checkpoints), identity, anatomy, consent for shipped
code, placement over GPUs, pruned model folders."""
