"""Where releases run: the local environment (Caddy + Bento servers) and Kubernetes manifests."""
