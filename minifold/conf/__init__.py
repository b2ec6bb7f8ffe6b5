"""The Hydra config tree (package data; Hydra reads it as pkg://minifold.conf)."""
