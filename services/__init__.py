"""Atalaya services: one package per service, plus the shared runtime and client."""
