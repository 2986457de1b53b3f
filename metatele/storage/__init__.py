"""Storage: files and logs (safetensors + JSON containers, wandb logging). Imports no stage of the package."""
