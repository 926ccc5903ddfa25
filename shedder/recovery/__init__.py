"""Recovery: LoRA or full fine-tuning of a pruned model, measured before and after."""
