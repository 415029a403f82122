"""Boards over the cell link: the protocol (one definition), transports, the `Board`
client, emulated boards, boards as cells of the simulated swarm, and nca-flash."""
