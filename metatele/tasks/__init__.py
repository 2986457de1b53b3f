"""Task families: the inner problems (seeded batches of LeakyReLU networks and their data) and the network itself."""
