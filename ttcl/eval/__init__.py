"""Measuring and improving programs on datasets: datasets (`datasets`), evaluation
(`evaluate`), the per-difficulty compute-optimal search (`optimize`), and PRM head training
(`train_prm`)."""
