"""Style LoRA training: the trainer (torch), its checkpoints (safetensors + JSON), and the job that runs it."""
