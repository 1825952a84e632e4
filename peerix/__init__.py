"""peerix: a peer-to-peer binary cache for Nix."""

__version__ = "0.1.0"
