"""What every command shares: the application context and common option help."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import click

from fleetimg import addresses, inventory
from fleetimg.inventory import Fleet
from fleetimg.ssh import Ssh, ssh_for

TO_HELP = "Nodes to act on: all-nodes, masters, workers, a group, or node1,node3."


@dataclass
class AppContext:
    inventory_path: Path
    verbose: bool
    inventory_given: bool = False  # by -i or FLEETIMG_INVENTORY, not found by looking
    _fleet: Fleet | None = field(default=None, repr=False)
    _resolved: Fleet | None = field(default=None, repr=False)

    def fleet(self, *, resolve: bool = True) -> Fleet:
        """The inventory; with `resolve`, DHCP nodes at the address they were found at
        (commands that write cards name them by their host name instead)."""
        if self._fleet is None:
            self._fleet = inventory.load(self.inventory_path)
        if not resolve:
            return self._fleet
        if self._resolved is None:
            self._resolved = addresses.resolve(self._fleet)
        return self._resolved

    def ssh(self, *, forward_agent: bool = False) -> Ssh:
        return ssh_for(self.fleet().known_hosts, forward_agent=forward_agent)


pass_app = click.make_pass_decorator(AppContext)
