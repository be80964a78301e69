"""Real servers for the object-storage tests, started and stopped by the tests.

Each server runs as a child process bound to 127.0.0.1 on free ports, with its data
in a temporary directory (the misbehaving HTTP server runs in a thread of the test).
``fixtures`` turns them into pytest fixtures.
"""
