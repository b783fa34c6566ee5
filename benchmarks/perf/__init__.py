"""Performance measurement: the limit benchmark (time against the forward/backward floor), meta-step
timings and the torch.func contenders. ``make perf`` runs them; results go to ``results/limits``.
"""
