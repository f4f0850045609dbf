"""Workflows that run across many blocks, images or machines."""
