"""clip-tiers training: open_clip models on a tier under a fixed compute budget, and their evaluation."""
