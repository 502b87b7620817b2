"""Machine providers behind one contract (see :mod:`.base`), chosen by name through :mod:`.registry`."""
