"""Differential privacy (client DP-SGD, server DP-FedAvg), privacy accounting
with `dp_accounting`, and simulated secure aggregation."""
