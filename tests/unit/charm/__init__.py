"""Scenario tests of the charm with the manager replaced by `FakeManager`."""
