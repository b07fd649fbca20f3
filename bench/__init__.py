"""Benchmarks of the voting service, each against a baseline measured in the same run (`make bench`)."""
