"""Gateway benchmarks and the fault lab: `python -m service.bench.*` scripts (gateway, stack,
minimal, startup, faults) and `faultlab`, the real multi-process deployment that the fault
suite and the fault benchmark break on purpose.
"""
