"""The symmetry: the group action on consecutive layer pairs, teleportation, and teleport strategies."""
