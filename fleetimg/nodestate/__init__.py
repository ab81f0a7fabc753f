"""A node's desired state, shared by the card writer (`fleetimg sdcard`) and the board
writer (`fleetimg apply`): what each concern of a node needs (model), the entries it is
made of (spec), the secrets beside the inventory it uses (secrets), and an in-memory root
filesystem that answers the model's reads (memfs). Nothing here writes a card or talks to a
board; `sdcard/` and `apply/` import from here, never the other way round."""
