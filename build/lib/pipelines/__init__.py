"""clip-tiers pipelines: the `tiers` command line, the demo, and studies over tiers x budgets."""
