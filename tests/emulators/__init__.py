"""Emulators of cloud APIs (GCE, Keystone + Nova) that the backend tests talk to on loopback."""
