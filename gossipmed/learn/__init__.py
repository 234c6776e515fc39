"""Learning one site's adapter: base model, adapters, data, DP-SGD training, evaluation."""
