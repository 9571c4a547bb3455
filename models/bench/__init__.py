"""Benchmarks and checks of the models package: `rpg bench` (quality, speed, scale) and the
`python -m models.bench.*` scripts (samplers, ssd, train_rate, gpu_check). The numbers in the
docs come from here.
"""
