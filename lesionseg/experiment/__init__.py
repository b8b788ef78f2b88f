"""Running experiments: pre-flight checks, sweeps over config keys, execution backends (sequential, process
pool, Ray), and k-fold cross-validation with fold ensembles."""
