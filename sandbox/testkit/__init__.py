"""The test kit: everything tests, benchmarks and the demo use to build what they exercise.

Tests, benchmarks and the demo import only this kit (and the product); nothing imports a test module.
"""
