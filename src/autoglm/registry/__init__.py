"""The model registry (MLflow's): register trained models under aliases and find them again to serve."""
