"""The local stack as OS processes: for the offline demo, the tests and the benchmark."""
