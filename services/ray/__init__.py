"""Atalaya's services as Ray Serve deployments (see services/ray/README.md)."""
