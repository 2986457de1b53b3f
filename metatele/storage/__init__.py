"""Storage: files and logs (the safetensors + JSON container, the JSON cleaner, provenance, wandb logging).

A foundation: imports no stage of the package."""
