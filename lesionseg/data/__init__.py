"""Cases in: dataset layouts and datalists, input checks, preprocessing, the batch sampler, fold assignment,
the synthetic phantoms and the demo dataset on disk."""
