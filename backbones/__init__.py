"""Backbone plugins. ``backbones.base`` holds the contract every backbone follows."""
