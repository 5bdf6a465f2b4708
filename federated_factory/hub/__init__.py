"""Hub side of the federation: endpoint configuration, the Hub-compatible server, manifests and cards."""
