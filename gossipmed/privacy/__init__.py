"""Differential privacy: the DP-SGD mechanism, accounting (Opacus) and the site's ledger."""
