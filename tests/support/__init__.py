"""Helpers shared by the tests: fixtures (plants, servers), fakes and harnesses. No test files here."""
