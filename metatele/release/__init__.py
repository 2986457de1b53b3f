"""Release: learned-optimizer checkpoints and their manifests."""
