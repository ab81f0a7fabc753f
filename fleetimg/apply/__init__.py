"""`fleetimg apply`: running boards brought to the inventory\x27s state over SSH."""
